//! Exact money: `NUMERIC` in PostgreSQL, `rust_decimal::Decimal` in Rust, and
//! a decimal string with two fraction digits ("25.98") on the wire.

use rust_decimal::Decimal;

/// Formats an amount with exactly two fraction digits, e.g. `25.98` or `2.50`.
pub fn format_money(amount: Decimal) -> String {
    format!("{:.2}", amount.round_dp(2))
}

/// Parses a wire amount such as "25.98".
pub fn parse_money(text: &str) -> Option<Decimal> {
    text.parse::<Decimal>()
        .ok()
        .map(|amount| amount.round_dp(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_two_fraction_digits() {
        assert_eq!(format_money(Decimal::new(250, 2)), "2.50");
        assert_eq!(format_money(Decimal::new(2598, 2)), "25.98");
        assert_eq!(format_money(Decimal::new(3, 0)), "3.00");
        assert_eq!(format_money(Decimal::new(12999, 3)), "13.00");
    }

    #[test]
    fn parses_what_it_formats() {
        assert_eq!(parse_money("25.98"), Some(Decimal::new(2598, 2)));
        assert_eq!(parse_money("abc"), None);
    }
}
