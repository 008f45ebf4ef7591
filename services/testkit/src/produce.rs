//! Producing a record with raw header bytes straight over the Kafka protocol.

/// Produces one record straight over the Kafka protocol (Produce v3, one
/// record batch, no compression), with header names and values taken as raw
/// bytes: the Rust, Java and Python clients only write UTF-8 header names, but
/// the protocol (and the Go clients) allow any bytes, so hostile-record tests
/// need this. With the test kit's login ([`crate::kafka::log_in_as`]) each
/// connection first authenticates over SASL/SCRAM-SHA-512. The record goes to the partition's leader, found through
/// `bootstrap` (a list, as for any client), and again to the new leader when
/// leadership moves meanwhile (a broker killed in a cluster). Returns the
/// record's offset; panics with the broker's error code.
pub async fn produce_raw(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[foodorder_runtime::record_headers::RawHeader],
) -> i64 {
    let login =
        crate::kafka::login().map(|(username, password)| (username.as_str(), password.as_str()));
    try_produce_raw_as(login, bootstrap, topic, partition, key, value, headers)
        .await
        .unwrap_or_else(|error| panic!("{error}"))
}

/// [`produce_raw`] logged in as `login` (username, password) over
/// SASL/SCRAM-SHA-512, or without a login; the broker's refusal (a failed
/// login, a Kafka error code other than leadership moving, no answer for
/// 90 s) is the error.
pub async fn try_produce_raw_as(
    login: Option<(&str, &str)>,
    bootstrap: &str,
    topic: &str,
    partition: i32,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[foodorder_runtime::record_headers::RawHeader],
) -> Result<i64, String> {
    let mut record = Vec::new();
    record.push(0); // attributes
    put_varint(&mut record, 0); // timestamp delta
    put_varint(&mut record, 0); // offset delta
    put_varbytes(&mut record, key);
    put_varbytes(&mut record, value);
    put_varint(&mut record, headers.len() as i64);
    for (name, header_value) in headers {
        put_varbytes(&mut record, Some(name));
        put_varbytes(&mut record, header_value.as_deref());
    }
    let now = chrono::Utc::now().timestamp_millis();
    // The part of the batch the CRC covers: attributes to the end.
    let mut body = Vec::new();
    body.extend_from_slice(&0_i16.to_be_bytes()); // attributes: no compression
    body.extend_from_slice(&0_i32.to_be_bytes()); // last offset delta
    body.extend_from_slice(&now.to_be_bytes()); // first timestamp
    body.extend_from_slice(&now.to_be_bytes()); // max timestamp
    body.extend_from_slice(&(-1_i64).to_be_bytes()); // producer id
    body.extend_from_slice(&(-1_i16).to_be_bytes()); // producer epoch
    body.extend_from_slice(&(-1_i32).to_be_bytes()); // base sequence
    body.extend_from_slice(&1_i32.to_be_bytes()); // records
    put_varint(&mut body, record.len() as i64);
    body.extend_from_slice(&record);
    let mut batch = Vec::new();
    batch.extend_from_slice(&0_i64.to_be_bytes()); // base offset
    batch.extend_from_slice(&((4 + 1 + 4 + body.len()) as i32).to_be_bytes()); // batch length
    batch.extend_from_slice(&(-1_i32).to_be_bytes()); // partition leader epoch
    batch.push(2); // magic
    batch.extend_from_slice(&crc32c(&body).to_be_bytes());
    batch.extend_from_slice(&body);

    let mut request = Vec::new();
    request.extend_from_slice(&0_i16.to_be_bytes()); // api key: Produce
    request.extend_from_slice(&3_i16.to_be_bytes()); // api version
    request.extend_from_slice(&1_i32.to_be_bytes()); // correlation id
    put_string(&mut request, "foodorder-raw-producer");
    request.extend_from_slice(&(-1_i16).to_be_bytes()); // transactional id: null
    request.extend_from_slice(&(-1_i16).to_be_bytes()); // acks: all
    request.extend_from_slice(&10_000_i32.to_be_bytes()); // timeout
    request.extend_from_slice(&1_i32.to_be_bytes()); // topics
    put_string(&mut request, topic);
    request.extend_from_slice(&1_i32.to_be_bytes()); // partitions
    request.extend_from_slice(&partition.to_be_bytes());
    request.extend_from_slice(&(batch.len() as i32).to_be_bytes());
    request.extend_from_slice(&batch);

    let send = async |leader: &str| -> std::io::Result<(i16, i64)> {
        let mut stream = tokio::net::TcpStream::connect(leader).await?;
        if let Some((username, password)) = login {
            scram_sha512_login(&mut stream, username, password).await?;
        }
        let response = round_trip(&mut stream, &request).await?;
        // correlation id, topics (1), topic name, partitions (1), partition, error code, base offset
        let short = || protocol_error("a truncated Produce response".to_owned());
        let name_len = response.get(8..10).ok_or_else(short)?;
        let at = 10 + usize::from(u16::from_be_bytes([name_len[0], name_len[1]])) + 4 + 4;
        let answer = response.get(at..at + 10).ok_or_else(short)?;
        let error_code = i16::from_be_bytes([answer[0], answer[1]]);
        let offset = i64::from_be_bytes(answer[2..10].try_into().expect("8 bytes"));
        Ok((error_code, offset))
    };
    // NOT_LEADER_OR_FOLLOWER, LEADER_NOT_AVAILABLE, NOT_ENOUGH_REPLICAS(_AFTER_APPEND),
    // REQUEST_TIMED_OUT: leadership or the ISR is moving; ask again.
    const MOVING: [i16; 5] = [6, 5, 19, 20, 7];
    let mut last = String::new();
    // Leaders are remembered between calls (a metadata request per record
    // would make copying a hundred records take a minute) and asked again
    // when a send fails.
    /// (bootstrap, topic, partition) and its leader's `host:port`.
    type Leaders = Vec<((String, String, i32), String)>;
    static LEADERS: std::sync::Mutex<Leaders> = std::sync::Mutex::new(Vec::new());
    let place = (bootstrap.to_owned(), topic.to_owned(), partition);
    let known = |place: &(String, String, i32)| {
        let leaders = LEADERS.lock().unwrap();
        leaders
            .iter()
            .find(|(known, _)| known == place)
            .map(|(_, leader)| leader.clone())
    };
    let forget = |place: &(String, String, i32)| {
        LEADERS.lock().unwrap().retain(|(known, _)| known != place);
    };
    // A killed leader is named by the metadata until the controller fences it
    // or it is back (up to the broker session timeout plus its restart): its
    // connections are refused at once all that while, so the tries are
    // bounded by time, not by count.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while std::time::Instant::now() < deadline {
        let leader = match known(&place) {
            Some(leader) => leader,
            None => {
                let leader = partition_leader(login, bootstrap, topic, partition).await;
                LEADERS
                    .lock()
                    .unwrap()
                    .push((place.clone(), leader.clone()));
                leader
            }
        };
        // A broker that stops answering (frozen, partitioned) must not hold
        // the caller for good: the request's own timeout is 10 s.
        let answer =
            match tokio::time::timeout(std::time::Duration::from_secs(15), send(&leader)).await {
                Ok(answer) => answer,
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no produce response within 15 s",
                )),
            };
        if !matches!(answer, Ok((0, _))) {
            forget(&place);
        }
        match answer {
            Ok((0, offset)) => return Ok(offset),
            Ok((code, _)) if MOVING.contains(&code) => last = format!("Kafka error code {code}"),
            Ok((code, _)) => {
                return Err(format!(
                    "the broker refused the raw record (Kafka error code {code})"
                ));
            }
            Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(format!("{leader}: {error}"));
            }
            Err(error) => last = format!("{leader}: {error}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    Err(format!(
        "the raw record could not be produced to {topic}/{partition}: {last}"
    ))
}

/// `host:port` of the leader of `topic`/`partition`, from a metadata request
/// through `bootstrap` (the first bootstrap address when there is no leader yet).
async fn partition_leader(
    login: Option<(&str, &str)>,
    bootstrap: &str,
    topic: &str,
    partition: i32,
) -> String {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    let login = login.map(|(username, password)| (username.to_owned(), password.to_owned()));
    tokio::task::spawn_blocking(move || {
        let first = bootstrap.split(',').next().unwrap_or_default().to_owned();
        let Ok(consumer) = {
            let mut config = rdkafka::ClientConfig::new();
            config.set("bootstrap.servers", &bootstrap);
            if let Some((username, password)) = &login {
                crate::broker::scram_login(&mut config, username, password);
            }
            config
        }
        .create::<BaseConsumer>() else {
            return first;
        };
        let Ok(metadata) =
            consumer.fetch_metadata(Some(&topic), std::time::Duration::from_secs(10))
        else {
            return first;
        };
        let leader = metadata
            .topics()
            .first()
            .and_then(|topic| topic.partitions().iter().find(|p| p.id() == partition))
            .map(|partition| partition.leader());
        metadata
            .brokers()
            .iter()
            .find(|broker| Some(broker.id()) == leader)
            .map(|broker| format!("{}:{}", broker.host(), broker.port()))
            .unwrap_or(first)
    })
    .await
    .expect("the metadata lookup panicked")
}

/// One request on `stream` (request header v1, correlation id 1) and the
/// body of its response (after the correlation id).
async fn exchange(
    stream: &mut tokio::net::TcpStream,
    api_key: i16,
    api_version: i16,
    body: &[u8],
) -> std::io::Result<Vec<u8>> {
    let mut request = Vec::with_capacity(body.len() + 40);
    request.extend_from_slice(&api_key.to_be_bytes());
    request.extend_from_slice(&api_version.to_be_bytes());
    request.extend_from_slice(&1_i32.to_be_bytes()); // correlation id
    put_string(&mut request, "foodorder-raw-producer");
    request.extend_from_slice(body);
    Ok(round_trip(stream, &request).await?.split_off(4))
}

/// Sends one size-prefixed request and reads its whole response (from the
/// correlation id on), refusing a size outside 4 bytes to 1 MiB.
async fn round_trip(
    stream: &mut tokio::net::TcpStream,
    request: &[u8],
) -> std::io::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(&(request.len() as i32).to_be_bytes())
        .await?;
    stream.write_all(request).await?;
    let size = stream.read_i32().await?;
    let size = usize::try_from(size)
        .ok()
        .filter(|size| (4..=1 << 20).contains(size))
        .ok_or_else(|| protocol_error(format!("a response of {size} bytes")))?;
    let mut response = vec![0; size];
    stream.read_exact(&mut response).await?;
    Ok(response)
}

/// The error code a response body starts with.
fn error_code(response: &[u8], call: &str) -> std::io::Result<i16> {
    match response {
        [high, low, ..] => Ok(i16::from_be_bytes([*high, *low])),
        _ => Err(protocol_error(format!("an empty {call} response"))),
    }
}

/// A login that cannot succeed by asking again: given up at once.
fn refused(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::PermissionDenied, what)
}

fn protocol_error(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

/// Reads a protocol `BYTES` (i32 length) or `STRING` (i16 length) at `*at`.
fn take<'a>(response: &'a [u8], at: &mut usize, wide: bool) -> std::io::Result<&'a [u8]> {
    let short = || protocol_error("a truncated SASL response".to_owned());
    let (len, width) = if wide {
        let bytes = response.get(*at..*at + 4).ok_or_else(short)?;
        (i32::from_be_bytes(bytes.try_into().unwrap()) as i64, 4)
    } else {
        let bytes = response.get(*at..*at + 2).ok_or_else(short)?;
        (i64::from(i16::from_be_bytes(bytes.try_into().unwrap())), 2)
    };
    *at += width;
    let len = usize::try_from(len).unwrap_or(0); // null: empty
    let value = response.get(*at..*at + len).ok_or_else(short)?;
    *at += len;
    Ok(value)
}

/// SASL/SCRAM-SHA-512 (RFC 5802) on a new connection: SaslHandshake v1,
/// then the client-first and client-final messages in SaslAuthenticate v1
/// requests; the server's signature is checked. A refused login is an error
/// of kind `PermissionDenied` carrying the broker's message.
async fn scram_sha512_login(
    stream: &mut tokio::net::TcpStream,
    username: &str,
    password: &str,
) -> std::io::Result<()> {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha512};
    type HmacSha512 = Hmac<Sha512>;
    let hmac = |key: &[u8], data: &[u8]| -> Vec<u8> {
        let mut mac = HmacSha512::new_from_slice(key).expect("HMAC takes a key of any length");
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    };

    let mut handshake = Vec::new();
    put_string(&mut handshake, "SCRAM-SHA-512");
    let response = exchange(stream, 17, 1, &handshake).await?;
    let code = error_code(&response, "SaslHandshake")?;
    if code != 0 {
        return Err(refused(format!(
            "the broker refused the SCRAM-SHA-512 handshake (Kafka error code {code})"
        )));
    }
    // One SaslAuthenticate v1 round: the server's bytes, or its refusal.
    async fn authenticate(
        stream: &mut tokio::net::TcpStream,
        message: &[u8],
    ) -> std::io::Result<Vec<u8>> {
        let mut body = Vec::new();
        body.extend_from_slice(&(message.len() as i32).to_be_bytes());
        body.extend_from_slice(message);
        let response = exchange(stream, 36, 1, &body).await?;
        let code = error_code(&response, "SaslAuthenticate")?;
        let mut at = 2;
        let error = String::from_utf8_lossy(take(&response, &mut at, false)?).into_owned();
        if code != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("SASL authentication failed (Kafka error code {code}): {error}"),
            ));
        }
        Ok(take(&response, &mut at, true)?.to_vec())
    }

    let name = username.replace('=', "=3D").replace(',', "=2C");
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let client_first_bare = format!("n={name},r={nonce}");
    let server_first = authenticate(stream, format!("n,,{client_first_bare}").as_bytes()).await?;
    let server_first = String::from_utf8(server_first)
        .map_err(|_| protocol_error("a server-first message that is not UTF-8".to_owned()))?;
    let field = |key: &str| {
        server_first
            .split(',')
            .find_map(|part| part.strip_prefix(key))
            .ok_or_else(|| protocol_error(format!("no {key} in the server-first message")))
    };
    let server_nonce = field("r=")?;
    if !server_nonce.starts_with(&nonce) {
        return Err(refused(
            "the server's nonce does not extend ours".to_owned(),
        ));
    }
    let salt = STANDARD
        .decode(field("s=")?)
        .map_err(|_| protocol_error("a salt that is not base64".to_owned()))?;
    // Kafka's own bounds for SCRAM iterations: fewer would be a downgrade, more
    // would hold this thread in PBKDF2 for as long as the server liked.
    let iterations: u32 = field("i=")?
        .parse()
        .ok()
        .filter(|count| (4096..=16384).contains(count))
        .ok_or_else(|| refused("an iteration count outside 4096..=16384".to_owned()))?;
    let mut salted = [0u8; 64];
    pbkdf2::pbkdf2_hmac::<Sha512>(password.as_bytes(), &salt, iterations, &mut salted);
    let client_key = hmac(&salted, b"Client Key");
    let stored_key = Sha512::digest(&client_key);
    // "biws": base64 of the GS2 header "n,," (no channel binding).
    let without_proof = format!("c=biws,r={server_nonce}");
    let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
    let signature = hmac(&stored_key, auth_message.as_bytes());
    let proof: Vec<u8> = client_key
        .iter()
        .zip(&signature)
        .map(|(key, sign)| key ^ sign)
        .collect();
    let client_final = format!("{without_proof},p={}", STANDARD.encode(proof));
    let server_final = authenticate(stream, client_final.as_bytes()).await?;
    let server_key = hmac(&salted, b"Server Key");
    let expected = format!(
        "v={}",
        STANDARD.encode(hmac(&server_key, auth_message.as_bytes()))
    );
    if server_final != expected.as_bytes() {
        return Err(refused(
            "the broker's SCRAM signature does not match: not the broker that holds this user"
                .to_owned(),
        ));
    }
    Ok(())
}

fn put_varint(out: &mut Vec<u8>, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag >= 0x80 {
        out.push((zigzag as u8) | 0x80);
        zigzag >>= 7;
    }
    out.push(zigzag as u8);
}

fn put_varbytes(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        Some(bytes) => {
            put_varint(out, bytes.len() as i64);
            out.extend_from_slice(bytes);
        }
        None => put_varint(out, -1),
    }
}

fn put_string(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as i16).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// CRC-32C (Castagnoli), the checksum of Kafka record batches.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0_u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
