//! Unit tests of the parent module.

use super::*;

/// Inputs per fuzz body.
const CASES: usize = 20_000;

/// SplitMix64: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound.max(1) as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    /// Up to `max - 1` random bytes.
    fn random_bytes(&mut self, max: usize) -> Vec<u8> {
        let len = self.below(max);
        (0..len).map(|_| self.next() as u8).collect()
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Strings that probe the checks: UUIDs good and bad, amounts at the
/// edges of `Decimal`, non-ASCII text.
const TEXT: &[&str] = &[
    "",
    "0190f5e8-7a4c-7b1e-9c2d-3e4f5a6b7c8d",
    "0190F5E8-7A4C-7B1E-9C2D-3E4F5A6B7C8D",
    "{0190f5e8-7a4c-7b1e-9c2d-3e4f5a6b7c8d}",
    "urn:uuid:0190f5e8-7a4c-7b1e-9c2d-3e4f5a6b7c8d",
    "0190f5e87a4c7b1e9c2d3e4f5a6b7c8d",
    "0190f5e8-7a4c-7b1e-9c2d-3e4f5a6b7c8",
    "25.98",
    "-0.00",
    "0.005",
    "1e5",
    "79228162514264337593543950335",
    "-79228162514264337593543950335",
    "79228162514264337593543950335.99",
    "7922816251426433759354395033.5",
    "0.0000000000000000000000000001",
    "0.00000000000000000000000000001",
    "99999999999999999999999999999999999",
    "1_000.00",
    " 1.00",
    "+1.00",
    ".5",
    "5.",
    "Zoë 🍕 \u{202e}",
    "\u{0}",
    "zoe@example.com",
];

fn text(rng: &mut Rng) -> String {
    if rng.chance(80) {
        let mut text = (*rng.pick(TEXT)).to_owned();
        if rng.chance(20) && !text.is_empty() {
            let mut cut = rng.below(text.len());
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        text
    } else {
        String::from_utf8_lossy(&rng.random_bytes(40)).into_owned()
    }
}

fn metadata(rng: &mut Rng) -> Option<EventMetadata> {
    rng.chance(90).then(|| EventMetadata {
        event_id: text(rng),
        correlation_id: text(rng),
        occurred_at: rng.chance(80).then(|| prost_types::Timestamp {
            seconds: rng.next() as i64 >> rng.below(64),
            nanos: rng.next() as i32,
        }),
        schema_version: if rng.chance(70) {
            events::SCHEMA_VERSION
        } else {
            rng.next() as u32
        },
        producer: text(rng),
    })
}

fn order_placed(rng: &mut Rng) -> OrderPlaced {
    OrderPlaced {
        metadata: metadata(rng),
        order_id: text(rng),
        customer_name: text(rng),
        customer_email: text(rng),
        total_amount: text(rng),
        items: (0..rng.below(4))
            .map(|_| OrderPlacedItem {
                menu_item_id: rng.next() as i32,
                menu_item_name: text(rng),
                quantity: rng.next() as i32,
                unit_price: text(rng),
                subtotal: text(rng),
            })
            .collect(),
    }
}

fn payment_completed(rng: &mut Rng) -> PaymentCompleted {
    PaymentCompleted {
        metadata: metadata(rng),
        order_id: text(rng),
        success: rng.chance(50),
        final_status: if rng.chance(80) {
            rng.below(6) as i32 - 1
        } else {
            rng.next() as i32
        },
        attempt_count: rng.next() as i32,
        processing_time_ms: rng.next() as i64,
        error_message: text(rng),
        amount: text(rng),
        customer_email: text(rng),
        customer_name: text(rng),
        payment_id: text(rng),
    }
}

/// A huge varint, as a length prefix that promises far more than follows.
const HUGE_LENGTHS: &[&[u8]] = &[
    &[0xff, 0xff, 0xff, 0xff, 0x0f],
    &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
    &[
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
    ],
    &[0x80, 0x80, 0x80, 0x80, 0x08],
];

/// One mutation of `bytes`, libFuzzer-style.
fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>) {
    match rng.below(8) {
        0 => bytes.truncate(rng.below(bytes.len() + 1)),
        1 => {
            for _ in 0..=rng.below(8) {
                if !bytes.is_empty() {
                    let at = rng.below(bytes.len());
                    bytes[at] ^= 1 << rng.below(8);
                }
            }
        }
        2 => {
            let extra = rng.random_bytes(64);
            bytes.extend(extra);
        }
        3 => {
            // Replace the byte after a random position with a huge length.
            let at = rng.below(bytes.len() + 1);
            let end = (at + 1).min(bytes.len());
            bytes.splice(at..end, rng.pick(HUGE_LENGTHS).iter().copied());
        }
        4 => {
            // A length-delimited field with a huge length, anywhere.
            let at = rng.below(bytes.len() + 1);
            let tag = ((rng.below(12) as u8) << 3) | 2;
            let mut field = vec![tag];
            let huge = rng.pick::<&[u8]>(HUGE_LENGTHS);
            field.extend_from_slice(huge);
            bytes.splice(at..at, field);
        }
        5 => {
            // Deeply nested groups and sub-messages.
            let depth = rng.below(300);
            let byte = *rng.pick(&[0x0b_u8, 0x0a, 0x53]);
            let at = rng.below(bytes.len() + 1);
            bytes.splice(at..at, std::iter::repeat_n(byte, depth));
        }
        6 => {
            let at = rng.below(bytes.len() + 1);
            let copy = bytes[rng.below(bytes.len() + 1)..].to_vec();
            bytes.splice(at..at, copy);
        }
        _ => {
            if !bytes.is_empty() {
                let at = rng.below(bytes.len());
                bytes[at] = *rng.pick(&[0x00, 0x7f, 0x80, 0xff, 0x0a, 0x12, 0x08]);
            }
        }
    }
}

fn event_input(rng: &mut Rng) -> Vec<u8> {
    let mut bytes = match rng.below(5) {
        0 => seed_order_placed().encode_to_vec(),
        1 => seed_payment_completed(rng.chance(50)).encode_to_vec(),
        2 => order_placed(rng).encode_to_vec(),
        3 => payment_completed(rng).encode_to_vec(),
        _ => rng.random_bytes(256),
    };
    for _ in 0..rng.below(4) {
        mutate(rng, &mut bytes);
    }
    bytes
}

/// Trace-context values near the valid ones.
fn trace_value(rng: &mut Rng) -> Vec<u8> {
    const VALUES: &[&str] = &[
        SEED_TRACEPARENT,
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",
        "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
        "a@b=c,=d,e=,f=g=h,,",
        "congo=t61rcWkgMzE, rojo=00f067aa0ba902b7 ",
    ];
    let mut bytes = rng.pick(VALUES).as_bytes().to_vec();
    for _ in 0..rng.below(3) {
        if bytes.is_empty() {
            break;
        }
        let at = rng.below(bytes.len());
        match rng.below(4) {
            0 => bytes[at] = *rng.pick(b"0123456789abcdefABCDEF-=,xz \t\xff"),
            1 => {
                bytes.remove(at);
            }
            2 => bytes.insert(at, *rng.pick(b"0-=, \xc3")),
            _ => bytes.truncate(at),
        }
    }
    bytes
}

fn header_list(rng: &mut Rng) -> Vec<RawHeader> {
    const NAMES: &[&str] = &[
        events::HEADER_TRACEPARENT,
        events::HEADER_TRACESTATE,
        events::HEADER_REQUEST_ID,
        events::HEADER_EVENT_TYPE,
        events::HEADER_CONTENT_TYPE,
        "Traceparent",
        "",
    ];
    let mut headers = if rng.chance(30) {
        seed_headers()
    } else {
        Vec::new()
    };
    for _ in 0..rng.below(8) {
        let name = if rng.chance(75) {
            rng.pick(NAMES).as_bytes().to_vec()
        } else {
            rng.random_bytes(12)
        };
        let value = match rng.below(10) {
            0 => None,
            1 | 2 => Some(rng.random_bytes(40)),
            3 => Some(text(rng).into_bytes()),
            _ => Some(trace_value(rng)),
        };
        let at = rng.below(headers.len() + 1);
        headers.insert(at, (name, value));
    }
    headers
}

#[test]
fn event_decoding_survives_random_and_mutated_records() {
    let mut rng = Rng(0x5eed_0001);
    for (target, _, bytes) in seed_corpus() {
        if target == "event_decoding" {
            event_decoding(&bytes);
        }
    }
    for _ in 0..CASES {
        event_decoding(&event_input(&mut rng));
    }
}

#[test]
fn record_headers_survive_random_and_mutated_header_lists() {
    let mut rng = Rng(0x5eed_0002);
    for (target, _, bytes) in seed_corpus() {
        if target == "record_headers" {
            record_headers(&bytes);
        }
    }
    for case in 0..CASES {
        let headers = header_list(&mut rng);
        if case % 2 == 0 {
            record_header_list(&headers);
        } else {
            let mut bytes = headers_to_bytes(&headers);
            for _ in 0..rng.below(3) {
                mutate(&mut rng, &mut bytes);
            }
            record_headers(&bytes);
        }
    }
}

#[test]
fn the_seeds_are_what_the_consumers_accept() {
    let order = seed_order_placed();
    let encoded = order.encode_to_vec();
    assert!(order_placed_verdict(Some(&order.order_id), &encoded).is_ok());
    assert!(order_placed_verdict(None, &encoded).is_err());
    assert!(order_placed_verdict(Some("another-key"), &encoded).is_err());
    for success in [true, false] {
        let paid = seed_payment_completed(success).encode_to_vec();
        assert!(payment_completed_verdict(&paid).is_ok());
    }
    let headers = seed_headers();
    assert_eq!(headers_from_bytes(&headers_to_bytes(&headers)), headers);
    let context = telemetry::extract(&record_headers::utf8_map(&headers));
    assert!(context.span().span_context().is_valid());
}

/// Regenerates the committed seed corpus:
/// `cargo test -p foodorder-testkit fuzzing::tests::write_seed_corpus -- --ignored`.
#[test]
#[ignore = "writes fuzz/corpus/*/seed-*"]
fn write_seed_corpus() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    for (target, name, bytes) in seed_corpus() {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}
