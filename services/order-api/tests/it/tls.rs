//! TLS on the gRPC API (rustls): a client that trusts the server's CA places
//! orders; a plaintext client, or one that trusts another CA, gets nothing;
//! settings the server could not use stop it before it starts.

use std::path::{Path, PathBuf};

use foodorder_contract::v1::ListMenuItemsRequest;
use foodorder_contract::v1::order_service_client::OrderServiceClient;
use order_api::tls::TlsFiles;

use crate::support::{order_request, spawn_app_with};

/// A CA and a server certificate for 127.0.0.1, made by the script `run --tls` uses.
fn certificates() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("foodorder-tls-{}", uuid::Uuid::new_v4()));
    let status = std::process::Command::new(
        foodorder_testkit::repository_root().join("build-support/tls-cert"),
    )
    .arg(&dir)
    .status()
    .expect("run build-support/tls-cert");
    assert!(status.success(), "build-support/tls-cert failed");
    dir
}

fn files(dir: &Path) -> TlsFiles {
    TlsFiles::new(dir.join("server.pem"), dir.join("server.key"))
}

async fn connect(
    address: std::net::SocketAddr,
    ca: Option<&Path>,
) -> Result<OrderServiceClient<tonic::transport::Channel>, tonic::transport::Error> {
    let endpoint = match ca {
        Some(ca) => tonic::transport::Endpoint::from_shared(format!("https://{address}"))
            .unwrap()
            .tls_config(order_api::tls::client_config(ca).unwrap())?,
        None => tonic::transport::Endpoint::from_shared(format!("http://{address}")).unwrap(),
    }
    .connect_timeout(std::time::Duration::from_secs(5))
    .timeout(std::time::Duration::from_secs(5));
    Ok(OrderServiceClient::new(endpoint.connect().await?))
}

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn a_client_that_trusts_the_ca_is_served_over_tls_and_no_other() {
    let dir = certificates();
    let other = certificates();
    let tls = files(&dir);
    let app = spawn_app_with(move |config| config.tls = Some(tls)).await;
    // The test app's own client trusts the CA: it places an order over TLS.
    let mut client = app.client.clone();
    let order = client
        .place_order(order_request(&[(1, 1)]))
        .await
        .expect("PlaceOrder over TLS")
        .into_inner()
        .order
        .unwrap();
    assert!(!order.id.is_empty());
    let mut trusting = connect(app.addr, Some(&dir.join("ca.pem")))
        .await
        .expect("connect over TLS");
    trusting
        .list_menu_items(ListMenuItemsRequest {})
        .await
        .expect("ListMenuItems over TLS");
    // Plaintext: the server speaks TLS only.
    let plaintext = match connect(app.addr, None).await {
        Err(error) => Err(error.to_string()),
        Ok(mut client) => client
            .list_menu_items(ListMenuItemsRequest {})
            .await
            .map(drop)
            .map_err(|status| status.to_string()),
    };
    assert!(plaintext.is_err(), "a plaintext client is not served");
    // A client that trusts another CA refuses the server's certificate.
    let untrusting = match connect(app.addr, Some(&other.join("ca.pem"))).await {
        Err(error) => Err(format!("{error:?}")),
        Ok(mut client) => client
            .list_menu_items(ListMenuItemsRequest {})
            .await
            .map(drop)
            .map_err(|status| format!("{status:?}")),
    };
    let refused = untrusting.expect_err("a client of another CA is not served");
    assert!(
        refused.to_lowercase().contains("certificate") || refused.contains("UnknownIssuer"),
        "refused for its certificate: {refused}"
    );
    // The health check of the binary speaks TLS with --ca (on the blocking
    // pool: the server runs on this test's runtime).
    let (address, ca) = (app.addr.to_string(), dir.join("ca.pem"));
    let health = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_order-api"))
            .arg("--health-check")
            .arg(address)
            .arg("--ca")
            .arg(ca)
            .output()
            .expect("run order-api --health-check")
    })
    .await
    .unwrap();
    assert!(
        health.status.success(),
        "health check over TLS: {}",
        String::from_utf8_lossy(&health.stderr)
    );
    app.stop().await;
    for dir in [dir, other] {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A client that opens a connection and never finishes its TLS handshake
/// (says nothing, or trickles a byte now and then) is cut off at the
/// handshake deadline; the server goes on serving others meanwhile.
#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn a_handshake_that_never_finishes_is_cut_at_its_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = certificates();
    let tls = TlsFiles {
        // Long enough for the legitimate client on a busy machine, short for the test.
        handshake_timeout: std::time::Duration::from_secs(2),
        ..files(&dir)
    };
    let app = spawn_app_with(move |config| config.tls = Some(tls)).await;
    let mut silent = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let mut trickling = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    // The first bytes of a TLS record header (a handshake record), then nothing more.
    trickling.write_all(&[0x16, 0x03]).await.unwrap();
    let started = std::time::Instant::now();
    // Meanwhile another client is served.
    let mut trusting = connect(app.addr, Some(&dir.join("ca.pem")))
        .await
        .expect("connect over TLS while two handshakes hang");
    trusting
        .list_menu_items(ListMenuItemsRequest {})
        .await
        .expect("ListMenuItems over TLS while two handshakes hang");
    for (name, stream) in [("silent", &mut silent), ("trickling", &mut trickling)] {
        let mut buffer = [0u8; 64];
        // Bounded: without the deadline the server would keep the connection for good.
        let read =
            tokio::time::timeout(std::time::Duration::from_secs(20), stream.read(&mut buffer))
                .await
                .unwrap_or_else(|_| panic!("the {name} connection was still open after 20 s"));
        // Closed (EOF) or reset: either way the server let go of it.
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "the {name} connection got {read:?}"
        );
    }
    eprintln!(
        "both hanging handshakes were cut {:.1} s after they began (deadline 2 s)",
        started.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn tls_settings_the_server_cannot_use_stop_it_before_it_starts() {
    let dir = certificates();
    std::fs::write(
        dir.join("garbage.key"),
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let cases = [
        (
            TlsFiles::new(dir.join("server.pem"), dir.join("missing.key")),
            "cannot read ORDER_API_TLS_KEY",
        ),
        (
            TlsFiles::new(dir.join("server.key"), dir.join("server.key")),
            "holds no PEM certificate",
        ),
        (
            TlsFiles::new(dir.join("server.pem"), dir.join("ca.pem")),
            "holds no PEM private key",
        ),
        (
            TlsFiles::new(dir.join("server.pem"), dir.join("garbage.key")),
            "not a usable certificate and key",
        ),
    ];
    let (pool, _database) = foodorder_testkit::database(&[&order_api::SCHEMA]).await;
    for (tls, expected) in cases {
        let mut config = order_api::Config::for_tests();
        config.tls = Some(tls);
        let error = order_api::Application::build_with_pool(config, pool.clone())
            .await
            .map(drop)
            .expect_err("the server must not start");
        let message = format!("{error:#}");
        assert!(message.contains(expected), "{expected}: {message}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
