//! The broker topology, declared idempotently at every start: a durable topic exchange
//! agencies publish to, a quorum queue bound to every routing key, and the two parking queues.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, ExchangeKind};

use super::Settings;

/// Durable quorum queue arguments.
fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString("quorum".into()),
    );
    args
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
    for queue in [&s.queue, &s.rejected_queue, &s.failed_queue] {
        channel
            .queue_declare(queue.as_str().into(), durable, quorum())
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
