//! Order rules with no I/O: validating and normalising a PlaceOrder request
//! ([`validation`]: merging lines, limits, the idempotency fingerprint) and
//! pricing it against the menu ([`pricing`]: existence, availability, exact
//! totals, the `OrderPlaced` event). The repository only runs SQL.

pub mod pricing;
pub mod validation;

pub use pricing::{MenuEntry, PricedLine, PricedOrder, PricingError, order_placed, price_order};
pub use validation::{FieldViolation, NewOrder, OrderLine, validate_place_order};
