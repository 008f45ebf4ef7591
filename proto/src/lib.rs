//! Rust types generated from the `foodorder.v1` protobuf contract: the
//! `OrderService` client and server, the Kafka event messages, and the encoded
//! file descriptor set used by gRPC server reflection.

/// The `foodorder.v1` package.
pub mod foodorder {
    /// Version 1 of the contract.
    pub mod v1 {
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("foodorder.v1");
    }
}

pub use foodorder::v1;

/// Encoded `FileDescriptorSet` of every file in the contract, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/foodorder_descriptor.bin"));

/// Full protobuf name of a message, as sent in the Kafka `event-type` header.
pub trait EventType {
    /// E.g. `foodorder.v1.OrderPlaced`.
    const EVENT_TYPE: &'static str;
}

impl EventType for v1::OrderPlaced {
    const EVENT_TYPE: &'static str = "foodorder.v1.OrderPlaced";
}

impl EventType for v1::PaymentCompleted {
    const EVENT_TYPE: &'static str = "foodorder.v1.PaymentCompleted";
}

impl EventType for v1::OrderUnprocessable {
    const EVENT_TYPE: &'static str = "foodorder.v1.OrderUnprocessable";
}
