//! Order rules with no I/O: validating and normalising a PlaceOrder request.

pub mod validation;

pub use validation::{FieldViolation, NewOrder, OrderLine, validate_place_order};
