//! Stored states as enums, each kept in a TEXT column under a fixed name:
//! [`text_enum!`] gives an enum its names and its sqlx mapping, so no state is
//! compared or bound as a string literal anywhere. The order and payment states
//! are the contract's (`OrderStatus`, `PaymentStatus`); services declare their own.

/// Declares `enum $name { $variant => "TEXT", … }` with `as_str`, `parse`,
/// `Display` and the sqlx Postgres mapping to TEXT (an unknown name fails
/// decoding with a clear error).
#[macro_export]
macro_rules! text_enum {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[$variant_meta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        $vis enum $name {
            $($(#[$variant_meta])* $variant),+
        }

        impl $name {
            /// Every value.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// The value stored as `text`.
            pub fn parse(text: &str) -> Option<Self> {
                match text {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, formatter: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                formatter.write_str(self.as_str())
            }
        }

        impl ::sqlx::Type<::sqlx::Postgres> for $name {
            fn type_info() -> ::sqlx::postgres::PgTypeInfo {
                <&str as ::sqlx::Type<::sqlx::Postgres>>::type_info()
            }

            fn compatible(ty: &::sqlx::postgres::PgTypeInfo) -> bool {
                <&str as ::sqlx::Type<::sqlx::Postgres>>::compatible(ty)
            }
        }

        impl<'q> ::sqlx::Encode<'q, ::sqlx::Postgres> for $name {
            fn encode_by_ref(
                &self,
                buffer: &mut ::sqlx::postgres::PgArgumentBuffer,
            ) -> ::std::result::Result<::sqlx::encode::IsNull, ::sqlx::error::BoxDynError> {
                <&str as ::sqlx::Encode<'q, ::sqlx::Postgres>>::encode_by_ref(&self.as_str(), buffer)
            }
        }

        impl<'r> ::sqlx::Decode<'r, ::sqlx::Postgres> for $name {
            fn decode(
                value: ::sqlx::postgres::PgValueRef<'r>,
            ) -> ::std::result::Result<Self, ::sqlx::error::BoxDynError> {
                let text = <&str as ::sqlx::Decode<'r, ::sqlx::Postgres>>::decode(value)?;
                $name::parse(text).ok_or_else(|| {
                    format!("{text:?} is not a known {}", stringify!($name)).into()
                })
            }
        }
    };
}

text_enum! {
    /// An order's state (`orders.status`).
    pub enum OrderState {
        /// Created, not yet handed to payment (not used by this platform's flow).
        Pending => "PENDING",
        /// Placed; the payment is under way.
        Processing => "PROCESSING",
        /// Paid.
        Completed => "COMPLETED",
        /// The payment failed.
        Failed => "FAILED",
    }
}

impl OrderState {
    /// True for COMPLETED and FAILED.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed)
    }

    /// The contract's enum.
    pub fn to_proto(self) -> foodorder_proto::v1::OrderStatus {
        use foodorder_proto::v1::OrderStatus;
        match self {
            Self::Pending => OrderStatus::Pending,
            Self::Processing => OrderStatus::Processing,
            Self::Completed => OrderStatus::Completed,
            Self::Failed => OrderStatus::Failed,
        }
    }
}

text_enum! {
    /// How a payment ended (`payment_attempts.status`).
    pub enum PaymentState {
        /// Charged.
        Succeeded => "SUCCEEDED",
        /// Not charged.
        Failed => "FAILED",
    }
}

impl PaymentState {
    /// The state of a payment that did or did not charge.
    pub fn of(success: bool) -> Self {
        if success {
            Self::Succeeded
        } else {
            Self::Failed
        }
    }

    /// The order state this payment leads to.
    pub fn order_state(self) -> OrderState {
        match self {
            Self::Succeeded => OrderState::Completed,
            Self::Failed => OrderState::Failed,
        }
    }

    /// The contract's enum.
    pub fn to_proto(self) -> foodorder_proto::v1::PaymentStatus {
        use foodorder_proto::v1::PaymentStatus;
        match self {
            Self::Succeeded => PaymentStatus::Succeeded,
            Self::Failed => PaymentStatus::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for state in OrderState::ALL {
            assert_eq!(OrderState::parse(state.as_str()), Some(*state));
        }
        assert_eq!(OrderState::parse("processing"), None);
        assert_eq!(PaymentState::of(true).order_state(), OrderState::Completed);
        assert!(OrderState::Failed.is_terminal() && !OrderState::Processing.is_terminal());
        assert_eq!(OrderState::Completed.to_string(), "COMPLETED");
    }
}
