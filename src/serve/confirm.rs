//! Publishing a message Herald must not lose: to a queue through the default exchange, with
//! `mandatory`, waiting for the broker's confirm. Parking and scheduling retries both go
//! through here before the event they came from is acknowledged.

use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel};

/// Why a message was not durably published: the event it came from must not be acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker did not confirm the message")]
    NotConfirmed,
}

/// Publishes to a queue through the default exchange and waits for the confirm.
pub(crate) async fn publish(
    channel: &Channel,
    queue: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), PublishError> {
    let confirm = channel
        .basic_publish(
            ShortString::from(""),
            queue.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            properties,
        )
        .await?
        .await?;
    if confirm.is_ack() && confirm.take_message().is_none() {
        Ok(())
    } else {
        Err(PublishError::NotConfirmed)
    }
}
