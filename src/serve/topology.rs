//! The broker topology, declared idempotently at every start: a durable topic exchange
//! agencies publish to, a quorum queue bound to every routing key, and the two parking queues.
//!
//! The events queue has a delivery limit: an event that keeps coming back (one that crashes
//! Herald, say) is dead-lettered, at least once, to the rejected queue instead of looping; the
//! broker's `x-death` header there says `delivery_limit`.
//!
//! The parking queues hold messages for an operator to look at, and looking (`herald dlq`) takes
//! a message and puts it back, which a quorum queue counts as a delivery. RabbitMQ 4 gives
//! quorum queues a default limit of 20 deliveries, after which a message is dropped, so the
//! parking queues are declared with a limit no inspection will reach. (RabbitMQ 3 has no
//! default, and there `-1`, RabbitMQ 4's "no limit", drops a message at its first return: the
//! explicit large limit means the same on both.)

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ExchangeKind};
use tracing::warn;

use super::Settings;

/// Durable quorum queue arguments, with `replicas` members when set (else the broker's
/// default) and `extra` arguments.
pub(super) fn quorum(replicas: Option<u16>, extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString("quorum".into()),
    );
    if let Some(n) = replicas {
        args.insert(
            ShortString::from("x-quorum-initial-group-size"),
            AMQPValue::LongInt(i32::from(n)),
        );
    }
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

/// A delivery limit no number of looks reaches (2^31 - 1).
pub(super) const NEVER: i32 = i32::MAX;

/// Arguments of a queue that holds messages until an operator acts: a quorum queue that never
/// drops a message for having been looked at.
pub(super) fn parking(replicas: Option<u16>) -> FieldTable {
    quorum(replicas, &[("x-delivery-limit", AMQPValue::LongInt(NEVER))])
}

/// Declares the exchange, the events queue and its binding, and the parking queues, on
/// channels of its own (a refused declaration closes its channel).
pub async fn declare(connection: &Connection, s: &Settings) -> Result<(), lapin::Error> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let mut channel = connection.create_channel().await?;
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
        .queue_declare(
            s.queue.as_str().into(),
            durable,
            quorum(s.replicas, &events),
        )
        .await?;
    for queue in [&s.rejected_queue, &s.failed_queue] {
        channel = declare_or_keep(connection, channel, queue, parking(s.replicas)).await?;
    }
    channel
        .queue_bind(
            s.queue.as_str().into(),
            s.exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let _ = channel.close(200, "topology declared".into()).await;
    Ok(())
}

/// Declares a durable queue with `args`. If the broker has the queue with other arguments (an
/// older Herald declared it), keeps using it as it is and says so: refusing to start would stop
/// every notification for what is a weaker guarantee, not a broken one. Returns the channel to
/// go on with (a refused declaration closes its channel).
pub(super) async fn declare_or_keep(
    connection: &Connection,
    channel: Channel,
    queue: &str,
    args: FieldTable,
) -> Result<Channel, lapin::Error> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    match channel.queue_declare(queue.into(), durable, args).await {
        Ok(_) => Ok(channel),
        Err(e) if precondition_failed(&e) => {
            let channel = connection.create_channel().await?;
            let passive = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            channel
                .queue_declare(queue.into(), passive, FieldTable::default())
                .await?;
            warn!(
                queue,
                refused = %e,
                "this queue exists with other arguments than Herald declares (an older Herald made it); it is used as it is, without the delivery limit Herald gives it; empty it and delete it so Herald declares it anew"
            );
            Ok(channel)
        }
        Err(e) => Err(e),
    }
}

/// The error to stop with when the broker refused a declaration because it has the exchange
/// or queue with other arguments: another instance (or an older Herald) declared it
/// otherwise. The broker's text names the argument and both values.
pub(super) fn mismatch(e: lapin::Error, url: &str) -> Result<super::ServeError, lapin::Error> {
    if !precondition_failed(&e) {
        return Err(e);
    }
    let said = match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => amqp.get_message().to_string(),
        _ => e.to_string(),
    };
    Ok(super::ServeError::Topology {
        url: url.to_owned(),
        said: said.trim_start_matches("PRECONDITION_FAILED - ").to_owned(),
    })
}

/// Whether the broker refused a declaration as inequivalent to the queue it has (406).
fn precondition_failed(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 406)
}
