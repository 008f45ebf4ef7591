//! Validation of a PlaceOrder request. Every problem is reported at once as a
//! field violation (field path + description), so a caller can fix them all in
//! one go. Lines with the same menu item are merged (quantities added) and the
//! merged quantity must still be within 1–99.

use std::collections::BTreeMap;

use foodorder_contract::v1::PlaceOrderRequest;
use sha2::{Digest, Sha256};

/// Longest accepted customer name, in characters.
pub const MAX_NAME_CHARS: usize = 100;
/// Longest accepted email address, in characters.
pub const MAX_EMAIL_CHARS: usize = 200;
/// Most lines in one order.
pub const MAX_LINES: usize = 100;
/// Largest quantity of one menu item.
pub const MAX_QUANTITY: i32 = 99;
/// Longest accepted idempotency key.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 200;

/// One invalid field: the path of the field in the request and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldViolation {
    /// Field path such as `items[2].quantity`.
    pub field: String,
    /// Human-readable description of the problem.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field`.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// One merged order line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrderLine {
    /// Menu item id.
    pub menu_item_id: i32,
    /// Merged quantity (1–99).
    pub quantity: i32,
    /// Index of the first request line with this menu item, for error paths.
    pub first_index: usize,
}

/// A valid, normalised PlaceOrder request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewOrder {
    /// Trimmed customer name.
    pub customer_name: String,
    /// Trimmed customer email.
    pub customer_email: String,
    /// Merged lines, sorted by menu item id.
    pub lines: Vec<OrderLine>,
    /// The idempotency key, from the request field or the metadata.
    pub idempotency_key: Option<String>,
}

impl NewOrder {
    /// SHA-256 over the normalised request, to tell a retry from a different request with the same key.
    pub fn fingerprint(&self) -> Vec<u8> {
        let mut hasher = Sha256::new();
        hasher.update(self.customer_name.as_bytes());
        hasher.update([0]);
        hasher.update(self.customer_email.as_bytes());
        hasher.update([0]);
        for line in &self.lines {
            hasher.update(line.menu_item_id.to_be_bytes());
            hasher.update(line.quantity.to_be_bytes());
        }
        hasher.finalize().to_vec()
    }
}

/// Validates `request`; `metadata_key` is the `idempotency-key` metadata entry, if any.
pub fn validate_place_order(
    request: &PlaceOrderRequest,
    metadata_key: Option<&str>,
) -> Result<NewOrder, Vec<FieldViolation>> {
    let mut violations = Vec::new();

    let customer_name = request.customer_name.trim().to_owned();
    if customer_name.is_empty() {
        violations.push(FieldViolation::new(
            "customer_name",
            "customer name must not be empty",
        ));
    } else if customer_name.chars().count() > MAX_NAME_CHARS {
        violations.push(FieldViolation::new(
            "customer_name",
            format!("customer name must be at most {MAX_NAME_CHARS} characters"),
        ));
    } else if customer_name.chars().any(char::is_control) {
        violations.push(FieldViolation::new(
            "customer_name",
            "customer name must not contain control characters",
        ));
    }

    let customer_email = request.customer_email.trim().to_owned();
    if customer_email.chars().count() > MAX_EMAIL_CHARS {
        violations.push(FieldViolation::new(
            "customer_email",
            format!("customer email must be at most {MAX_EMAIL_CHARS} characters"),
        ));
    } else if !is_valid_email(&customer_email) {
        violations.push(FieldViolation::new(
            "customer_email",
            "customer email must be a valid email address",
        ));
    }

    let lines = validate_lines(request, &mut violations);
    let idempotency_key =
        validate_idempotency_key(&request.idempotency_key, metadata_key, &mut violations);

    if violations.is_empty() {
        Ok(NewOrder {
            customer_name,
            customer_email,
            lines,
            idempotency_key,
        })
    } else {
        Err(violations)
    }
}

fn validate_lines(
    request: &PlaceOrderRequest,
    violations: &mut Vec<FieldViolation>,
) -> Vec<OrderLine> {
    if request.items.is_empty() {
        violations.push(FieldViolation::new(
            "items",
            "an order must contain at least one item",
        ));
        return Vec::new();
    }
    if request.items.len() > MAX_LINES {
        violations.push(FieldViolation::new(
            "items",
            format!("an order must contain at most {MAX_LINES} items"),
        ));
        return Vec::new();
    }
    let mut merged: BTreeMap<i32, OrderLine> = BTreeMap::new();
    for (index, item) in request.items.iter().enumerate() {
        let mut line_ok = true;
        if item.menu_item_id <= 0 {
            violations.push(FieldViolation::new(
                format!("items[{index}].menu_item_id"),
                "menu item id must be a positive number (see ListMenuItems)",
            ));
            line_ok = false;
        }
        if !(1..=MAX_QUANTITY).contains(&item.quantity) {
            violations.push(FieldViolation::new(
                format!("items[{index}].quantity"),
                format!("quantity must be between 1 and {MAX_QUANTITY}"),
            ));
            line_ok = false;
        }
        if line_ok {
            merged
                .entry(item.menu_item_id)
                .and_modify(|line| line.quantity += item.quantity)
                .or_insert(OrderLine {
                    menu_item_id: item.menu_item_id,
                    quantity: item.quantity,
                    first_index: index,
                });
        }
    }
    for line in merged.values() {
        if line.quantity > MAX_QUANTITY {
            violations.push(FieldViolation::new(
                format!("items[{}].quantity", line.first_index),
                format!(
                    "total quantity of menu item {} is {}, at most {MAX_QUANTITY} allowed",
                    line.menu_item_id, line.quantity
                ),
            ));
        }
    }
    merged.into_values().collect()
}

fn validate_idempotency_key(
    field_key: &str,
    metadata_key: Option<&str>,
    violations: &mut Vec<FieldViolation>,
) -> Option<String> {
    let key = match (field_key.is_empty(), metadata_key) {
        (true, None) => return None,
        (true, Some(metadata)) => metadata,
        (false, Some(metadata)) if metadata != field_key => {
            violations.push(FieldViolation::new(
                "idempotency_key",
                "idempotency_key and the idempotency-key metadata differ; send one or make them equal",
            ));
            return None;
        }
        (false, _) => field_key,
    };
    if key.is_empty()
        || key.len() > MAX_IDEMPOTENCY_KEY_CHARS
        || !key.bytes().all(|byte| byte.is_ascii_graphic())
    {
        violations.push(FieldViolation::new(
            "idempotency_key",
            format!("idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable ASCII characters without spaces"),
        ));
        return None;
    }
    Some(key.to_owned())
}

/// A pragmatic email check: one `@`, a local part of 1–64 characters without
/// spaces, and a domain of dot-separated labels (letters, digits, hyphens) with
/// at least one dot and a top-level label of at least two letters.
pub fn is_valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    if local.is_empty() || local.len() > 64 || domain.contains('@') {
        return false;
    }
    let local_ok = local.chars().all(|character| {
        character.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(character)
    }) && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..");
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && domain.len() <= 253
        && labels.iter().all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|character| character.is_ascii_alphanumeric() || character == '-')
        })
        && labels.last().is_some_and(|tld| {
            tld.len() >= 2 && tld.chars().all(|character| character.is_ascii_alphabetic())
        });
    local_ok && domain_ok
}

#[cfg(test)]
mod tests {
    use foodorder_contract::v1::OrderItemInput;

    use super::*;

    fn request(items: &[(i32, i32)]) -> PlaceOrderRequest {
        PlaceOrderRequest {
            customer_name: "  Ada Lovelace ".into(),
            customer_email: "ada@example.com".into(),
            items: items
                .iter()
                .map(|&(menu_item_id, quantity)| OrderItemInput {
                    menu_item_id,
                    quantity,
                })
                .collect(),
            idempotency_key: String::new(),
        }
    }

    fn fields(result: Result<NewOrder, Vec<FieldViolation>>) -> Vec<String> {
        result
            .expect_err("expected violations")
            .into_iter()
            .map(|violation| violation.field)
            .collect()
    }

    #[test]
    fn accepts_and_normalises_a_valid_order() {
        let order = validate_place_order(&request(&[(3, 1), (1, 2), (3, 4)]), None).unwrap();
        assert_eq!(order.customer_name, "Ada Lovelace");
        assert_eq!(
            order.lines,
            vec![
                OrderLine {
                    menu_item_id: 1,
                    quantity: 2,
                    first_index: 1
                },
                OrderLine {
                    menu_item_id: 3,
                    quantity: 5,
                    first_index: 0
                },
            ]
        );
        assert_eq!(order.idempotency_key, None);
    }

    #[test]
    fn reports_every_bad_field() {
        let mut bad = request(&[(0, 1), (2, 0), (3, 100)]);
        bad.customer_name = "   ".into();
        bad.customer_email = "not-an-email".into();
        assert_eq!(
            fields(validate_place_order(&bad, None)),
            [
                "customer_name",
                "customer_email",
                "items[0].menu_item_id",
                "items[1].quantity",
                "items[2].quantity"
            ]
        );
    }

    #[test]
    fn limits_lengths_and_counts() {
        let mut long = request(&[(1, 1)]);
        long.customer_name = "x".repeat(101);
        long.customer_email = format!("{}@example.com", "a".repeat(190));
        assert_eq!(
            fields(validate_place_order(&long, None)),
            ["customer_name", "customer_email"]
        );
        assert_eq!(fields(validate_place_order(&request(&[]), None)), ["items"]);
        let many: Vec<(i32, i32)> = (1..=101).map(|id| (id, 1)).collect();
        assert_eq!(
            fields(validate_place_order(&request(&many), None)),
            ["items"]
        );
        let hundred: Vec<(i32, i32)> = (1..=100).map(|id| (id, 1)).collect();
        assert!(validate_place_order(&request(&hundred), None).is_ok());
    }

    #[test]
    fn merged_quantity_is_limited() {
        assert_eq!(
            fields(validate_place_order(&request(&[(1, 60), (1, 40)]), None)),
            ["items[0].quantity"]
        );
        assert!(validate_place_order(&request(&[(1, 60), (1, 39)]), None).is_ok());
    }

    #[test]
    fn idempotency_key_from_field_or_metadata() {
        let mut with_field = request(&[(1, 1)]);
        with_field.idempotency_key = "key-1".into();
        assert_eq!(
            validate_place_order(&with_field, None)
                .unwrap()
                .idempotency_key
                .as_deref(),
            Some("key-1")
        );
        assert_eq!(
            validate_place_order(&with_field, Some("key-1"))
                .unwrap()
                .idempotency_key
                .as_deref(),
            Some("key-1")
        );
        assert_eq!(
            fields(validate_place_order(&with_field, Some("other"))),
            ["idempotency_key"]
        );
        assert_eq!(
            validate_place_order(&request(&[(1, 1)]), Some("meta"))
                .unwrap()
                .idempotency_key
                .as_deref(),
            Some("meta")
        );
        assert_eq!(
            fields(validate_place_order(&request(&[(1, 1)]), Some("has space"))),
            ["idempotency_key"]
        );
    }

    #[test]
    fn fingerprint_ignores_line_order_but_not_content() {
        let first = validate_place_order(&request(&[(1, 1), (2, 2)]), None).unwrap();
        let same = validate_place_order(&request(&[(2, 2), (1, 1)]), None).unwrap();
        let different = validate_place_order(&request(&[(1, 1), (2, 3)]), None).unwrap();
        assert_eq!(first.fingerprint(), same.fingerprint());
        assert_ne!(first.fingerprint(), different.fingerprint());
    }

    #[test]
    fn email_check() {
        for valid in [
            "a@b.co",
            "first.last+tag@sub.example.org",
            "x_y@my-domain.io",
        ] {
            assert!(is_valid_email(valid), "{valid} should be valid");
        }
        for invalid in [
            "", "a", "a@b", "@b.co", "a@.co", "a@b..co", "a b@c.co", "a@b.c", "a@@b.co", ".a@b.co",
            "a@-b.co",
        ] {
            assert!(!is_valid_email(invalid), "{invalid} should be invalid");
        }
    }
}
