//! Pricing an order against the menu: every line must name a menu item that
//! exists and is available; each line costs the menu price times the
//! quantity, exactly (decimal), and the total is their sum. Also the
//! `OrderPlaced` event built from a priced order.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use foodorder_contract::events;
use foodorder_contract::money::format_money;
use foodorder_contract::v1::{OrderPlaced, OrderPlacedItem};
use rust_decimal::Decimal;
use uuid::Uuid;

use super::{FieldViolation, NewOrder};

/// A menu item as pricing sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MenuEntry {
    /// Menu item id.
    pub id: i32,
    /// Its name, copied into the order line.
    pub name: String,
    /// Its price.
    pub price: Decimal,
    /// Whether it can be ordered now.
    pub available: bool,
}

/// One order line priced from the menu.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PricedLine {
    /// Menu item id.
    pub menu_item_id: i32,
    /// Menu item name at the time of the order.
    pub name: String,
    /// Quantity.
    pub quantity: i32,
    /// Menu price at the time of the order.
    pub unit_price: Decimal,
    /// `unit_price × quantity`.
    pub subtotal: Decimal,
}

/// An order priced from the menu.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PricedOrder {
    /// The lines, in the order of the request's (merged) lines.
    pub lines: Vec<PricedLine>,
    /// Sum of the subtotals.
    pub total: Decimal,
}

/// Why an order cannot be priced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PricingError {
    /// Lines naming menu items that do not exist (a caller error).
    UnknownItems(Vec<FieldViolation>),
    /// Menu items that exist but cannot be ordered now: (id, name).
    Unavailable(Vec<(i32, String)>),
}

/// Prices `order` from `menu` (the entries of its menu item ids).
pub fn price_order(
    order: &NewOrder,
    menu: &HashMap<i32, MenuEntry>,
) -> Result<PricedOrder, PricingError> {
    let unknown: Vec<FieldViolation> = order
        .lines
        .iter()
        .filter(|line| !menu.contains_key(&line.menu_item_id))
        .map(|line| {
            FieldViolation::new(
                format!("items[{}].menu_item_id", line.first_index),
                format!(
                    "menu item {} does not exist (see ListMenuItems)",
                    line.menu_item_id
                ),
            )
        })
        .collect();
    if !unknown.is_empty() {
        return Err(PricingError::UnknownItems(unknown));
    }
    let unavailable: Vec<(i32, String)> = order
        .lines
        .iter()
        .filter_map(|line| menu.get(&line.menu_item_id))
        .filter(|item| !item.available)
        .map(|item| (item.id, item.name.clone()))
        .collect();
    if !unavailable.is_empty() {
        return Err(PricingError::Unavailable(unavailable));
    }
    let lines: Vec<PricedLine> = order
        .lines
        .iter()
        .filter_map(|line| {
            let item = menu.get(&line.menu_item_id)?;
            Some(PricedLine {
                menu_item_id: line.menu_item_id,
                name: item.name.clone(),
                quantity: line.quantity,
                unit_price: item.price,
                subtotal: item.price * Decimal::from(line.quantity),
            })
        })
        .collect();
    let total = lines.iter().map(|line| line.subtotal).sum();
    Ok(PricedOrder { lines, total })
}

/// The `OrderPlaced` event of a stored order.
pub fn order_placed(
    order_id: Uuid,
    order: &NewOrder,
    priced: &PricedOrder,
    correlation_id: &str,
    producer: &str,
    created_at: DateTime<Utc>,
) -> OrderPlaced {
    OrderPlaced {
        metadata: Some(events::metadata(correlation_id, producer, created_at)),
        order_id: order_id.to_string(),
        customer_name: order.customer_name.clone(),
        customer_email: order.customer_email.clone(),
        total_amount: format_money(priced.total),
        items: priced
            .lines
            .iter()
            .map(|line| OrderPlacedItem {
                menu_item_id: line.menu_item_id,
                menu_item_name: line.name.clone(),
                quantity: line.quantity,
                unit_price: format_money(line.unit_price),
                subtotal: format_money(line.subtotal),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::OrderLine;

    fn order(lines: &[(i32, i32)]) -> NewOrder {
        NewOrder {
            customer_name: "Ada".into(),
            customer_email: "ada@example.com".into(),
            lines: lines
                .iter()
                .enumerate()
                .map(|(index, &(menu_item_id, quantity))| OrderLine {
                    menu_item_id,
                    quantity,
                    first_index: index,
                })
                .collect(),
            idempotency_key: None,
        }
    }

    fn menu() -> HashMap<i32, MenuEntry> {
        [
            (1, "Pizza", "12.99", true),
            (2, "Soup", "0.10", true),
            (3, "Sold out", "5.00", false),
        ]
        .into_iter()
        .map(|(id, name, price, available)| {
            (
                id,
                MenuEntry {
                    id,
                    name: name.into(),
                    price: price.parse().unwrap(),
                    available,
                },
            )
        })
        .collect()
    }

    #[test]
    fn prices_exactly_in_decimal() {
        let priced = price_order(&order(&[(1, 2), (2, 3)]), &menu()).unwrap();
        assert_eq!(priced.total, "26.28".parse::<Decimal>().unwrap());
        assert_eq!(priced.lines[1].subtotal, "0.30".parse::<Decimal>().unwrap());
        assert_eq!(priced.lines[0].name, "Pizza");
    }

    #[test]
    fn unknown_items_are_caller_errors_with_the_request_path() {
        let error = price_order(&order(&[(1, 1), (42, 1)]), &menu()).unwrap_err();
        assert_eq!(
            error,
            PricingError::UnknownItems(vec![FieldViolation::new(
                "items[1].menu_item_id",
                "menu item 42 does not exist (see ListMenuItems)"
            )])
        );
    }

    #[test]
    fn unavailable_items_are_named_after_unknown_ones_are_ruled_out() {
        let error = price_order(&order(&[(3, 1), (1, 1)]), &menu()).unwrap_err();
        assert_eq!(
            error,
            PricingError::Unavailable(vec![(3, "Sold out".into())])
        );
        let both = price_order(&order(&[(3, 1), (9, 1)]), &menu()).unwrap_err();
        assert!(matches!(both, PricingError::UnknownItems(_)), "{both:?}");
    }

    #[test]
    fn the_event_carries_the_priced_lines_as_exact_text() {
        let new_order = order(&[(1, 2), (2, 3)]);
        let priced = price_order(&new_order, &menu()).unwrap();
        let id = Uuid::now_v7();
        let event = order_placed(id, &new_order, &priced, "req-1", "order-api", Utc::now());
        assert_eq!(event.order_id, id.to_string());
        assert_eq!(event.total_amount, "26.28");
        assert_eq!(
            event
                .items
                .iter()
                .map(|item| item.subtotal.as_str())
                .collect::<Vec<_>>(),
            ["25.98", "0.30"]
        );
        assert_eq!(event.metadata.unwrap().correlation_id, "req-1");
    }
}
