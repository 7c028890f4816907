//! [`NatsBus`]: NATS JetStream, the bus of services on several machines.

use std::fmt;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream, AckKind};
use async_nats::HeaderMap;
use futures_util::StreamExt;

use super::query::{Answering, Handler, Queries};
use super::{Acknowledge, Bus, BusError, Message, Subscription};
use crate::envelope::{Metadata, RecordedEvent};
use crate::failpoint;

/// How long a publication waits for JetStream's acknowledgement, by default.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a message stays unacknowledged before it is delivered again, by
/// default (JetStream's own default).
const ACK_WAIT: Duration = Duration::from_secs(30);

/// [`NatsBus::PARTITIONS`].
const PARTITIONS: u32 = 16;

/// The partition of an aggregate's messages: FNV-1a (32 bits) of its type and
/// id, modulo [`NatsBus::PARTITIONS`]. The same in every process and release, so that
/// every relay publishes an aggregate's messages to the same partition.
fn partition_of(aggregate_type: &str, aggregate_id: &str) -> u32 {
    const OFFSET: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    let bytes = aggregate_type
        .bytes()
        .chain([0])
        .chain(aggregate_id.bytes());
    let hash = bytes.fold(OFFSET, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(PRIME)
    });
    hash % PARTITIONS
}

/// The headers of a published event (its payload is the message's body).
mod header {
    pub(super) const MSG_ID: &str = "Nats-Msg-Id";
    pub(super) const ID: &str = "Eda-Event-Id";
    pub(super) const NAME: &str = "Eda-Event";
    pub(super) const SCHEMA: &str = "Eda-Event-Version";
    pub(super) const AGGREGATE_TYPE: &str = "Eda-Aggregate-Type";
    pub(super) const AGGREGATE_ID: &str = "Eda-Aggregate-Id";
    pub(super) const VERSION: &str = "Eda-Aggregate-Version";
    pub(super) const POSITION: &str = "Eda-Position";
    pub(super) const RECORDED_AT: &str = "Eda-Recorded-At";
    pub(super) const METADATA: &str = "Eda-Metadata";
    pub(super) const SUBJECT: &str = "Eda-Subject";
}

/// NATS JetStream as the bus: a stream per service, durable pull consumers
/// with explicit acknowledgements, de-duplication by `Nats-Msg-Id` (the event
/// id) within the stream's duplicate window (2 minutes by default).
///
/// A service's bus publishes to its own stream, named after the service
/// (`customers` → stream `customers`, subjects `customers.>`): a message at
/// subject `Customer.CustomerRegistered` goes to
/// `customers.{partition}.Customer.CustomerRegistered`, where the partition
/// (`0` to `15`, [`PARTITIONS`](Self::PARTITIONS)) is a hash of its aggregate's type and id, the
/// same for all of an aggregate's messages. Its envelope travels in headers
/// (`Nats-Msg-Id` and `Eda-Event-Id`, `Eda-Event`, `Eda-Event-Version`, `Eda-Aggregate-Type`,
/// `Eda-Aggregate-Id`, `Eda-Aggregate-Version`, `Eda-Position`,
/// `Eda-Recorded-At`, `Eda-Metadata` with the correlation and causation ids),
/// and the payload as stored is the body.
///
/// A consumer ([`subscribe`](Self::subscribe)) is a durable pull consumer on
/// the producer's stream with at most one message unacknowledged at a time:
/// messages are delivered in the stream's order, each aggregate's events in
/// their order, at the cost of one round trip per message. Several instances
/// of a consuming service subscribing under one name share that one consumer:
/// they take turns, and order holds; they do not process in parallel.
///
/// To share the work, instances subscribe with
/// [`subscribe_partitioned`](Self::subscribe_partitioned) instead: a durable
/// consumer per partition, each with one message unacknowledged at a time, so
/// up to 16 messages of different partitions are handled at once, by whichever
/// instances pull them, while each aggregate's messages (one partition's) stay
/// in order.
#[derive(Clone)]
pub struct NatsBus {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    service: String,
    publish_timeout: Duration,
    ack_wait: Duration,
}

impl fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsBus")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

fn unavailable(error: impl std::error::Error + Send + Sync + 'static) -> BusError {
    BusError::Unavailable(Box::new(error))
}

/// A service's name as a stream name and a subject token.
fn check_service(service: &str) -> Result<(), BusError> {
    let valid = !service.is_empty()
        && service
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid {
        Ok(())
    } else {
        Err(BusError::Refused {
            what: "service name",
            reason: format!(
                "`{service}` names a JetStream stream and a subject token: letters, digits, `-` and `_`"
            ),
        })
    }
}

impl NatsBus {
    /// How many partitions a service's stream has: all of an aggregate's
    /// messages go to one of them (a hash of its type and id), the token after
    /// the service in their subject. Fixed, so that producers and consumers
    /// cannot disagree.
    pub const PARTITIONS: u32 = PARTITIONS;

    /// Connects to the NATS server at `url` as service `service`, creating
    /// the service's stream (`service`, subjects `service.>`, kept in files)
    /// if it is missing. The client reconnects by itself after the server
    /// goes away; what is published meanwhile fails, and the relay tries it
    /// again.
    ///
    /// # Errors
    /// The server cannot be reached, has no JetStream, or the service name is
    /// not valid.
    pub async fn connect(url: &str, service: &str) -> Result<NatsBus, BusError> {
        check_service(service)?;
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(url);
        let client = tokio::time::timeout(PUBLISH_TIMEOUT, client)
            .await
            .map_err(unavailable)?
            .map_err(unavailable)?;
        let jetstream = jetstream::new(client.clone());
        let bus = NatsBus {
            client,
            jetstream,
            service: service.to_owned(),
            publish_timeout: PUBLISH_TIMEOUT,
            ack_wait: ACK_WAIT,
        };
        bus.stream(service).await?;
        Ok(bus)
    }

    /// How long a publication waits for JetStream's acknowledgement (5 s by
    /// default) before it fails (and the relay tries it again).
    #[must_use]
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// How long a consumer created by [`subscribe`](Self::subscribe) may
    /// keep a message unacknowledged before JetStream delivers it again (30 s
    /// by default): after a consumer dies, its successor waits this long for
    /// the message it was handling. A message handled for longer than this is
    /// delivered again meanwhile (the inbox drops it).
    #[must_use]
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }

    async fn stream(&self, service: &str) -> Result<stream::Stream, BusError> {
        let config = stream::Config {
            name: service.to_owned(),
            subjects: vec![format!("{service}.>")],
            storage: stream::StorageType::File,
            ..Default::default()
        };
        self.jetstream
            .get_or_create_stream(config)
            .await
            .map_err(unavailable)
    }

    /// Subscribes the durable consumer `name` to the messages of service
    /// `producer` (its stream) whose subject matches `pattern` (NATS-style,
    /// without the service's prefix and partition: `"Customer.>"`, `">"` for
    /// all), in the stream's order.
    ///
    /// # Errors
    /// The server cannot be reached, or refuses the consumer.
    pub async fn subscribe(
        &self,
        name: &str,
        producer: &str,
        pattern: &str,
    ) -> Result<NatsSubscription, BusError> {
        self.subscription(name, producer, pattern, false).await
    }

    /// Subscribes consumer `name` to the messages of service `producer` whose
    /// subject matches `pattern`, as [`subscribe`](Self::subscribe) does, but
    /// partition by partition: a durable consumer per partition (`{name}-0` to
    /// `{name}-15`), each with one message unacknowledged at a time. Each
    /// aggregate's messages come in their order; those of different
    /// partitions come as they are pulled. Instances of a consuming service
    /// that subscribe so under one name share the work: each handles the
    /// messages it pulls, up to 16 at once across instances. They must share
    /// one read database (PostgreSQL): each applies a part of the messages.
    ///
    /// # Errors
    /// The server cannot be reached, or refuses the consumers.
    pub async fn subscribe_partitioned(
        &self,
        name: &str,
        producer: &str,
        pattern: &str,
    ) -> Result<NatsSubscription, BusError> {
        self.subscription(name, producer, pattern, true).await
    }

    /// [`subscribe`](Self::subscribe), or with `partitioned`,
    /// [`subscribe_partitioned`](Self::subscribe_partitioned).
    async fn subscription(
        &self,
        name: &str,
        producer: &str,
        pattern: &str,
        partitioned: bool,
    ) -> Result<NatsSubscription, BusError> {
        check_service(producer)?;
        check_service(name)?;
        let stream = self.stream(producer).await?;
        // Each durable's name, and the partition token its filter takes.
        let durables: Vec<(String, String)> = if partitioned {
            let partition = |p: u32| (format!("{name}-{p}"), p.to_string());
            (0..PARTITIONS).map(partition).collect()
        } else {
            vec![(name.to_owned(), "*".to_owned())]
        };
        let mut consumers = Vec::new();
        for (durable, partition) in &durables {
            let consumer = self.durable(&stream, durable, producer, partition, pattern);
            consumers.push(consumer.await?);
        }
        Ok(NatsSubscription::of(consumers))
    }

    /// The durable pull consumer `name` of `producer`'s messages in
    /// `partition` (a number, or `*`) whose subject matches `pattern`.
    async fn durable(
        &self,
        stream: &stream::Stream,
        name: &str,
        producer: &str,
        partition: &str,
        pattern: &str,
    ) -> Result<consumer::PullConsumer, BusError> {
        let config = consumer::pull::Config {
            durable_name: Some(name.to_owned()),
            filter_subject: format!("{producer}.{partition}.{pattern}"),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 1,
            ack_wait: self.ack_wait,
            ..Default::default()
        };
        stream
            .get_or_create_consumer(name, config)
            .await
            .map_err(unavailable)
    }
}

impl Bus for NatsBus {
    async fn publish(&self, message: &Message) -> Result<(), BusError> {
        let event = &message.event;
        let mut headers = HeaderMap::new();
        let metadata = serde_json::to_string(&event.metadata).map_err(unavailable)?;
        if !failpoint::broken("bus.without_msg_id") {
            // The stream drops a message whose id it has seen (the control
            // of the relay's crash tests goes without).
            headers.insert(header::MSG_ID, event.event_id.to_string().as_str());
        }
        for (name, value) in [
            (header::ID, event.event_id.to_string()),
            (header::NAME, event.name.clone()),
            (header::SCHEMA, event.event_version.to_string()),
            (header::AGGREGATE_TYPE, event.aggregate_type.clone()),
            (header::AGGREGATE_ID, event.aggregate_id.clone()),
            (header::VERSION, event.version.to_string()),
            (header::POSITION, event.position.to_string()),
            (header::RECORDED_AT, event.recorded_at.to_rfc3339()),
            (header::METADATA, metadata),
            (header::SUBJECT, message.subject.clone()),
        ] {
            headers.insert(name, value.as_str());
        }
        let partition = if failpoint::broken("bus.partition_by_event") {
            // The control of the partitioned consumers' order test: an
            // aggregate's messages scattered over the partitions.
            partition_of("", &event.event_id.to_string())
        } else {
            partition_of(&event.aggregate_type, &event.aggregate_id)
        };
        let subject = format!("{}.{partition}.{}", self.service, message.subject);
        let publishing = async {
            let ack = self
                .jetstream
                .publish_with_headers(subject, headers, event.payload.clone().into())
                .await
                .map_err(unavailable)?;
            ack.await.map_err(unavailable)
        };
        match tokio::time::timeout(self.publish_timeout, publishing).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(error),
            Err(elapsed) => Err(unavailable(elapsed)),
        }
    }
}

/// A durable consumer on a [`NatsBus`], or one per partition:
/// [`next`](Subscription::next) gives its messages in the stream's order
/// (each partition's, when partitioned).
pub struct NatsSubscription {
    durables: Vec<Durable>,
    /// The durable to look at first next time, so that none goes unserved.
    first: usize,
}

/// One durable pull consumer, and its stream of pulled messages.
struct Durable {
    consumer: consumer::PullConsumer,
    messages: Option<consumer::pull::Stream>,
}

impl fmt::Debug for NatsSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsSubscription").finish_non_exhaustive()
    }
}

impl NatsSubscription {
    fn of(consumers: Vec<consumer::PullConsumer>) -> Self {
        let durables = consumers.into_iter().map(|consumer| Durable {
            consumer,
            messages: None,
        });
        NatsSubscription {
            durables: durables.collect(),
            first: 0,
        }
    }
}

impl Subscription for NatsSubscription {
    type Delivery = NatsDelivery;

    /// The next message, from whichever durable has one first. A message
    /// without eda's headers (not published by a relay) is terminated (never
    /// delivered again) with a warning, and the next one is given.
    async fn next(&mut self) -> Result<NatsDelivery, BusError> {
        if let [durable] = self.durables.as_mut_slice() {
            return durable.next().await;
        }
        // Each durable's `next` may be dropped unfinished: what it pulled stays
        // in its stream, and a message it did not terminate comes again.
        let count = self.durables.len();
        let first = self.first;
        self.first = (first + 1) % count;
        let (before, after) = self.durables.split_at_mut(first);
        let nexts = after.iter_mut().chain(before).map(|d| Box::pin(d.next()));
        let (next, _, _) = futures_util::future::select_all(nexts).await;
        next
    }
}

impl Durable {
    async fn next(&mut self) -> Result<NatsDelivery, BusError> {
        loop {
            let messages = match &mut self.messages {
                Some(messages) => messages,
                None => {
                    let messages = self.consumer.messages().await.map_err(unavailable)?;
                    self.messages.insert(messages)
                }
            };
            let message = match messages.next().await {
                Some(Ok(message)) => message,
                Some(Err(error)) => {
                    // The stream of pulls is rebuilt on the next call.
                    self.messages = None;
                    return Err(unavailable(error));
                }
                None => {
                    self.messages = None;
                    continue;
                }
            };
            match decode(&message) {
                Ok(decoded) => {
                    return Ok(NatsDelivery {
                        message: decoded,
                        nats: message,
                    })
                }
                Err(reason) => {
                    tracing::warn!(subject = %message.subject, reason, "not an eda message: terminated");
                    if let Err(error) = message.ack_with(AckKind::Term).await {
                        tracing::warn!(%error, "a message could not be terminated");
                    }
                }
            }
        }
    }
}

/// The event of a message that a relay published.
fn decode(message: &jetstream::Message) -> Result<Message, String> {
    let headers = message.headers.as_ref().ok_or("no headers")?;
    let get = |name: &str| {
        headers
            .get(name)
            .map(|value| value.as_str().to_owned())
            .ok_or_else(|| format!("no `{name}` header"))
    };
    let parse = |name: &str| -> Result<u64, String> {
        get(name)?
            .parse()
            .map_err(|_| format!("`{name}` is not a number"))
    };
    let payload = std::str::from_utf8(&message.payload)
        .map_err(|_| "the payload is not UTF-8".to_owned())?
        .to_owned();
    let metadata: Metadata = serde_json::from_str(&get(header::METADATA)?)
        .map_err(|error| format!("`{}`: {error}", header::METADATA))?;
    let event = RecordedEvent {
        event_id: get(header::ID)?
            .parse()
            .map_err(|_| format!("`{}` is not a UUID", header::ID))?,
        aggregate_type: get(header::AGGREGATE_TYPE)?,
        aggregate_id: get(header::AGGREGATE_ID)?,
        version: parse(header::VERSION)?,
        position: parse(header::POSITION)?,
        name: get(header::NAME)?,
        event_version: u32::try_from(parse(header::SCHEMA)?)
            .map_err(|_| format!("`{}` is too large", header::SCHEMA))?,
        payload,
        metadata,
        recorded_at: get(header::RECORDED_AT)?
            .parse()
            .map_err(|_| format!("`{}` is not a time", header::RECORDED_AT))?,
    };
    Ok(Message {
        subject: get(header::SUBJECT)?,
        event,
    })
}

/// A message delivered by a [`NatsSubscription`].
pub struct NatsDelivery {
    message: Message,
    nats: jetstream::Message,
}

impl fmt::Debug for NatsDelivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsDelivery")
            .field("message", &self.message)
            .finish_non_exhaustive()
    }
}

impl Acknowledge for NatsDelivery {
    fn message(&self) -> &Message {
        &self.message
    }

    async fn ack(self) -> Result<(), BusError> {
        // A double ack waits for the server's confirmation: once it returns,
        // the message is not delivered again.
        self.nats
            .double_ack()
            .await
            .map_err(|error| BusError::Unavailable(error.to_string().into()))
    }
}

/// The subject a query is asked at.
fn query_subject(name: &str) -> String {
    format!("eda.query.{name}")
}

/// Queries over NATS request-reply (core NATS, not JetStream: a question
/// nobody answers now is not kept). Instances of the answering service share
/// the questions (a queue group), one answer each.
impl Queries for NatsBus {
    async fn request(
        &self,
        name: &str,
        request: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, BusError> {
        let asking = self.client.request(query_subject(name), request.into());
        match tokio::time::timeout(timeout, asking).await {
            Ok(Ok(answer)) => Ok(answer.payload.to_vec()),
            Ok(Err(error)) => Err(unavailable(error)),
            Err(elapsed) => Err(unavailable(elapsed)),
        }
    }

    async fn serve(&self, name: &str, handler: Handler) -> Result<Answering, BusError> {
        let mut questions = self
            .client
            .queue_subscribe(query_subject(name), "eda.answer".to_owned())
            .await
            .map_err(unavailable)?;
        let client = self.client.clone();
        let task = tokio::spawn(async move {
            while let Some(question) = questions.next().await {
                let Some(reply) = question.reply else {
                    continue;
                };
                let answer = handler(question.payload.to_vec()).await;
                if let Err(error) = client.publish(reply, answer.into()).await {
                    tracing::warn!(%error, "an answer could not be sent");
                }
            }
        });
        Ok(Answering::new(move || task.abort()))
    }
}

#[cfg(test)]
mod tests {
    use super::{partition_of, PARTITIONS};

    /// The partitions are part of the subjects other services subscribe to:
    /// they must not change between releases (nor depend on the platform).
    #[test]
    fn an_aggregates_partition_is_fixed() {
        let known = [
            ("Customer", "c-1", 10),
            ("Customer", "c-2", 7),
            ("Order", "42", 3),
            ("", "", 15),
        ];
        for (aggregate_type, aggregate_id, partition) in known {
            assert_eq!(
                partition_of(aggregate_type, aggregate_id),
                partition,
                "{aggregate_type}/{aggregate_id}"
            );
        }
    }

    /// The type is part of the key: `("ab", "c")` and `("a", "bc")` differ.
    #[test]
    fn the_type_and_id_are_kept_apart() {
        let spread = (0..64)
            .filter(|i| {
                let id = format!("{i}");
                partition_of(&format!("T{id}"), "x") != partition_of("T", &format!("{id}x"))
            })
            .count();
        assert!(spread > 32, "{spread}");
    }

    /// Many aggregates spread over every partition.
    #[test]
    fn aggregates_spread_over_every_partition() {
        let mut counts = [0u32; PARTITIONS as usize];
        for i in 0..1600 {
            counts[partition_of("Customer", &format!("c-{i}")) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&n| (50..=150).contains(&n)),
            "{counts:?}"
        );
    }
}
