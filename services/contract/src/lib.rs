//! The `foodorder.v1` contract as every service reads it, with no I/O: the
//! generated protobuf types (re-exported), the event envelope and its checked
//! decoders, the order and payment states the contract defines (stored as
//! TEXT), exact money, and the names of the event topics. Each service owns
//! the rest: its schema, its dead-letter topic, its own states.

pub mod events;
pub mod money;
pub mod states;
pub mod topics;

pub use foodorder_proto::{EventType, FILE_DESCRIPTOR_SET, v1};
