//! The broker topology, declared idempotently at every start: a durable topic exchange
//! agencies publish to, a quorum queue bound to every routing key, and the two parking queues.
//!
//! The events queue has a delivery limit: an event that keeps coming back (one that crashes
//! Herald, say) is dead-lettered, at least once, to the rejected queue instead of looping; the
//! broker's `x-death` header there says `delivery_limit`.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, ExchangeKind};

use super::Settings;

/// Durable quorum queue arguments, with `extra` ones.
pub(super) fn quorum(extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString("quorum".into()),
    );
    for (k, v) in extra {
        args.insert(ShortString::from(*k), v.clone());
    }
    args
}

/// Dead-lettering that the broker guarantees at least once (quorum queues only).
pub(super) fn dead_letter_to(queue: &str) -> [(&'static str, AMQPValue); 4] {
    [
        ("x-dead-letter-exchange", AMQPValue::LongString("".into())),
        (
            "x-dead-letter-routing-key",
            AMQPValue::LongString(queue.into()),
        ),
        (
            "x-dead-letter-strategy",
            AMQPValue::LongString("at-least-once".into()),
        ),
        ("x-overflow", AMQPValue::LongString("reject-publish".into())),
    ]
}

pub async fn declare(channel: &Channel, s: &Settings) -> Result<(), lapin::Error> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .exchange_declare(
            s.exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let mut events = vec![(
        "x-delivery-limit",
        AMQPValue::LongInt(i32::from(s.delivery_limit)),
    )];
    events.extend(dead_letter_to(&s.rejected_queue));
    channel
        .queue_declare(s.queue.as_str().into(), durable, quorum(&events))
        .await?;
    for queue in [&s.rejected_queue, &s.failed_queue] {
        channel
            .queue_declare(queue.as_str().into(), durable, quorum(&[]))
            .await?;
    }
    channel
        .queue_bind(
            s.queue.as_str().into(),
            s.exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}
