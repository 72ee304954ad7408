//! A ledger filled by the store itself: SQL that generates the rows (events, their person
//! identifiers, two notifications each, their attempts, events refused at the intake), so a
//! million notifications take seconds to write, the same on SQLite and PostgreSQL. Every value
//! is worked out from the row's number, so a fill is the same at every run.
#![allow(dead_code)] // Only the ledger benchmarks fill a ledger.

use herald::ledger::Backend;

/// Where a notification goes.
#[derive(Debug, Clone)]
pub struct Addressed {
    pub route: String,
    /// `police:WYP-LEEDS`; the class is the part before the colon.
    pub recipient: String,
    /// `email` or `webhook`.
    pub channel: &'static str,
    /// The route's deadline rule as written, and the deadline it gives: milliseconds after the
    /// notification is made.
    pub sla: (&'static str, i64),
}

impl Addressed {
    pub fn new(
        route: &str,
        recipient: &str,
        channel: &'static str,
        sla: (&'static str, i64),
    ) -> Self {
        Addressed {
            route: route.to_owned(),
            recipient: recipient.to_owned(),
            channel,
            sla,
        }
    }
}

/// A kind of event: who publishes it, its type, and where its two notifications go.
#[derive(Debug, Clone)]
pub struct Kind {
    pub publisher: String,
    pub event_type: String,
    pub notifications: [Addressed; 2],
}

/// How the handling of a notification ended (every time relative to when it was made).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered at the first attempt, within ten minutes, as is every notification no rule
    /// picks.
    Delivered,
    /// A transient failure after a second, then delivered within the deadline.
    Recovered,
    /// A transient failure after a second, then delivered an hour after the deadline.
    Late,
    /// Refused for good after a second (one attempt row, its `attempts` 2).
    Parked,
    /// Transient failures until the retry schedule ran out.
    Expired,
    /// Two transient failures, waiting for the next attempt.
    Retrying,
    /// Being delivered now: no attempt yet.
    Pending,
    /// The recipient may not be told: never made, no channel.
    Skipped,
}

/// One attempt: when (SQL), its outcome, its status or reply code.
struct Attempt {
    at: String,
    outcome: &'static str,
    code: Option<i64>,
}

impl Outcome {
    /// status, reason, attempts, first_failure_at, delivered_at, sla_outcome, as SQL.
    fn columns(self, made: &str, deadline: &str) -> [String; 6] {
        let on_time = format!("{made} + (i * 7919) % 600000");
        let failed = format!("{made} + 1000");
        let null = || "NULL".to_owned();
        let text = |t: &str| quote(t);
        match self {
            Outcome::Delivered => [
                text("delivered"),
                null(),
                "1".into(),
                null(),
                on_time,
                text("met"),
            ],
            Outcome::Recovered => [
                text("delivered"),
                null(),
                "2".into(),
                failed,
                format!("{made} + 30000 + (i * 7919) % 600000"),
                text("met"),
            ],
            Outcome::Late => [
                text("delivered"),
                null(),
                "2".into(),
                failed,
                format!("{deadline} + 3600000"),
                text("breached"),
            ],
            Outcome::Parked => [
                text("parked"),
                text("refused by the recipient"),
                "2".into(),
                failed,
                null(),
                null(),
            ],
            Outcome::Expired => [
                text("expired"),
                text("HTTP 503 Service Unavailable (retries ran out)"),
                "3".into(),
                failed,
                null(),
                null(),
            ],
            Outcome::Retrying => [
                text("retrying"),
                text("HTTP 503 Service Unavailable"),
                "2".into(),
                failed,
                null(),
                null(),
            ],
            Outcome::Pending => [text("pending"), null(), "0".into(), null(), null(), null()],
            Outcome::Skipped => [
                text("skipped"),
                text("not authorised to act for the person"),
                "0".into(),
                null(),
                null(),
                null(),
            ],
        }
    }

    /// The attempts the ledger holds, in the order they were made.
    fn attempts(self, made: &str, columns: &[String; 6]) -> Vec<Attempt> {
        let at = |after: i64| format!("{made} + {after}");
        let failure = |after: i64, outcome, code| Attempt {
            at: at(after),
            outcome,
            code: Some(code),
        };
        let delivery = || Attempt {
            at: columns[4].clone(),
            outcome: "delivered",
            code: None,
        };
        match self {
            Outcome::Delivered => vec![delivery()],
            Outcome::Recovered | Outcome::Late => {
                vec![failure(1000, "http-retryable", 503), delivery()]
            }
            Outcome::Parked => vec![failure(1000, "http-refused", 400)],
            Outcome::Expired => vec![
                failure(1000, "http-retryable", 503),
                failure(61_000, "http-retryable", 503),
                failure(3_601_000, "timeout", 0),
            ],
            Outcome::Retrying => vec![
                failure(1000, "http-retryable", 503),
                failure(31_000, "http-retryable", 503),
            ],
            Outcome::Pending | Outcome::Skipped => Vec::new(),
        }
    }
}

/// Each routed event's person, by three identifiers (`NOMS:`, `PNC:` and, on every other
/// event, `CRN:`).
#[derive(Debug, Clone, Copy)]
pub struct Persons {
    /// Different people.
    pub people: i64,
    /// Every `first_every`th event is about the first of them (a prolific offender); the rest
    /// are spread over the others.
    pub first_every: i64,
}

impl Persons {
    /// Person `p`'s NOMS number, as the fill writes it.
    pub fn noms(p: i64) -> String {
        format!(
            "NOMS:A{}{}C",
            1000 + p % 9000,
            char::from(b'A' + u8::try_from((p / 9000) % 26).unwrap_or(0))
        )
    }

    fn sql(self) -> String {
        format!(
            "CASE WHEN i % {} = 0 THEN 0 ELSE 1 + (i * 7919) % {} END",
            self.first_every,
            (self.people - 1).max(1)
        )
    }
}

/// What a ledger is filled with.
#[derive(Debug, Clone)]
pub struct Fill {
    /// When the first event was received, in milliseconds since 1970.
    pub start: i64,
    /// The events are spread evenly over this many milliseconds from `start`.
    pub span: i64,
    /// Notifications, two per routed event.
    pub notifications: i64,
    /// Event `k` is of kind `k % kinds.len()`.
    pub kinds: Vec<Kind>,
    /// How the handling of notifications ended, when not as [`Outcome::Delivered`]: a SQL
    /// condition on `i` (the notification's number, from 0; notification `i` is made by event
    /// `i / 2`, and the later `i`, the later it was made) and the outcome; the first condition
    /// that holds decides.
    pub outcomes: Vec<(String, Outcome)>,
    /// A row in `attempts` for every attempt (each delivery too), or only for the failures.
    pub every_attempt: bool,
    /// The routed events' persons (none: no `persons` rows).
    pub persons: Option<Persons>,
    /// Events refused at the intake (`schema-violation`), over the same time, after the
    /// routed ones.
    pub refused: i64,
}

/// `text` as a SQL string literal.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// `values[index % values.len()]` as SQL: a constant when they are all the same, else a
/// `CASE` over the shortest period the list repeats with.
fn pick(index: &str, values: &[String]) -> String {
    let n = values.len();
    let period = (1..=n)
        .find(|p| n.is_multiple_of(*p) && (0..n).all(|k| values[k] == values[k % p]))
        .unwrap_or(n);
    if period == 1 {
        return values[0].clone();
    }
    let mut sql = format!("CASE {index} % {period}");
    for (k, v) in values[..period].iter().enumerate() {
        sql.push_str(&format!(" WHEN {k} THEN {v}"));
    }
    sql + " END"
}

/// The numbers 0 to `n - 1`, as the rows of a subquery with the one column `i`.
pub fn series(backend: Backend, n: i64) -> String {
    match backend {
        Backend::Sqlite => format!(
            "WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i < {}) \
             SELECT i FROM s",
            n - 1
        ),
        Backend::Postgres => format!(
            "SELECT i FROM generate_series(0::bigint, {}) AS s(i)",
            n - 1
        ),
    }
}

impl Fill {
    pub fn events(&self) -> i64 {
        self.notifications / 2
    }

    /// The milliseconds between two routed events.
    pub fn gap(&self) -> i64 {
        self.span / self.events().max(1)
    }

    /// The statements that fill an empty, migrated ledger, in order.
    pub fn sql(&self, backend: Backend) -> Vec<String> {
        let (t0, gap, events) = (self.start, self.gap(), self.events());
        let kinds = self.kinds.len();
        // Notification i is the (i % 2)th of event i / 2, of kind (i / 2) % kinds: i % (2 *
        // kinds) tells both.
        let each = |f: &dyn Fn(&Addressed) -> String| -> String {
            let values: Vec<String> = (0..2 * kinds)
                .map(|n| f(&self.kinds[n / 2].notifications[n % 2]))
                .collect();
            pick("i", &values)
        };
        let of_kind = |f: &dyn Fn(&Kind) -> String| -> String {
            let values: Vec<String> = self.kinds.iter().map(f).collect();
            pick("i", &values)
        };
        let made = format!("({t0} + (i / 2) * {gap})");
        let deadline = format!("({made} + {})", each(&|a| a.sla.1.to_string()));
        let chosen = |column: &dyn Fn(Outcome) -> String| -> String {
            if self.outcomes.is_empty() {
                return column(Outcome::Delivered);
            }
            let mut sql = "CASE".to_owned();
            for (condition, outcome) in &self.outcomes {
                sql.push_str(&format!(" WHEN {condition} THEN {}", column(*outcome)));
            }
            let default = column(Outcome::Delivered);
            if default != "NULL" {
                sql.push_str(&format!(" ELSE {default}"));
            }
            sql + " END"
        };
        let column = |n: usize| chosen(&|o: Outcome| o.columns(&made, &deadline)[n].clone());
        let channel = each(&|a| quote(a.channel));
        let skipped: Vec<&str> = self
            .outcomes
            .iter()
            .filter(|(_, o)| *o == Outcome::Skipped)
            .map(|(c, _)| c.as_str())
            .collect();
        let channel_made = if skipped.is_empty() {
            channel.clone()
        } else {
            format!(
                "CASE WHEN {} THEN 'none' ELSE {channel} END",
                skipped.join(" OR ")
            )
        };
        let mut statements = vec![
            format!(
                "INSERT INTO events (id, publisher, message_id, event_type, version, occurred_at, \
                 received_at, outcome) \
                 SELECT i + 1, {}, 'evt-' || i, {}, 1, \
                 {t0} + i * {gap}, {t0} + i * {gap}, 'routed' FROM ({}) AS e",
                of_kind(&|k| quote(&k.publisher)),
                of_kind(&|k| quote(&k.event_type)),
                series(backend, events)
            ),
            format!(
                "INSERT INTO notifications (key, event_id, route, recipient, recipient_class, \
                 channel, sla_rule, deadline, created_at, status, reason, attempts, \
                 first_failure_at, delivered_at, sla_outcome, updated_at) \
                 SELECT 'msg_' || i, i / 2 + 1, {}, {}, {}, {channel_made}, {}, {deadline}, \
                 {made}, {}, {}, {}, {}, {}, {}, {made} FROM ({}) AS n",
                each(&|a| quote(&a.route)),
                each(&|a| quote(&a.recipient)),
                each(&|a| quote(a.recipient.split(':').next().unwrap_or(""))),
                each(&|a| quote(a.sla.0)),
                column(0),
                column(1),
                column(2),
                column(3),
                column(4),
                column(5),
                series(backend, self.notifications)
            ),
        ];
        // The attempts, one statement per place in a notification's list of attempts.
        let delivered_code = each(&|a| if a.channel == "email" { "250" } else { "200" }.into());
        let list = |o: Outcome| -> Vec<Attempt> {
            o.attempts(&made, &o.columns(&made, &deadline))
                .into_iter()
                .filter(|a| self.every_attempt || a.outcome != "delivered")
                .collect()
        };
        let most = self
            .outcomes
            .iter()
            .map(|(_, o)| *o)
            .chain([Outcome::Delivered])
            .map(|o| list(o).len())
            .max()
            .unwrap_or(0);
        for place in 0..most {
            let field = |f: &dyn Fn(&Attempt) -> String| {
                chosen(&|o| list(o).get(place).map_or_else(|| "NULL".into(), f))
            };
            let has = chosen(&|o| u8::from(list(o).len() > place).to_string());
            let code = field(&|a| match (a.outcome, a.code) {
                ("delivered", _) => delivered_code.clone(),
                (_, Some(c)) if c > 0 => c.to_string(),
                _ => "NULL".into(),
            });
            statements.push(format!(
                "INSERT INTO attempts (notification_key, at, duration_ms, outcome, code, breaker) \
                 SELECT 'msg_' || i, {}, 30, {}, CAST({code} AS BIGINT), 'closed' FROM ({}) AS n \
                 WHERE {has} = 1",
                field(&|a| a.at.clone()),
                field(&|a| quote(a.outcome)),
                series(backend, self.notifications)
            ));
        }
        if let Some(p) = self.persons {
            let person = p.sql();
            let letter = format!(
                "substr('ABCDEFGHIJKLMNOPQRSTUVWXYZ', \
                 CAST(1 + (({person}) / 9000) % 26 AS INTEGER), 1)"
            );
            for (identifier, which) in [
                (
                    format!("'NOMS:A' || (1000 + ({person}) % 9000) || {letter} || 'C'"),
                    "1 = 1",
                ),
                (
                    format!(
                        "'PNC:' || (2000 + ({person}) % 25) || '/' || (1000000 + ({person})) || 'X'"
                    ),
                    "1 = 1",
                ),
                (format!("'CRN:X' || (100000 + ({person}))"), "i % 2 = 0"),
            ] {
                statements.push(format!(
                    "INSERT INTO persons (event_id, identifier) SELECT i + 1, {identifier} \
                     FROM ({}) AS e WHERE {which}",
                    series(backend, events)
                ));
            }
        }
        if self.refused > 0 {
            let every = self.span / self.refused;
            statements.push(format!(
                "INSERT INTO events (id, publisher, message_id, event_type, version, occurred_at, \
                 received_at, outcome, reason) \
                 SELECT {events} + i + 1, 'court', 'refused-' || i, 'court.bail.decided', 1, \
                 {t0} + i * {every} + 17, {t0} + i * {every} + 17, 'rejected', \
                 'schema-violation' FROM ({}) AS e",
                series(backend, self.refused)
            ));
        }
        statements
    }
}
