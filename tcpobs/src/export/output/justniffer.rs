//! justniffer-compatible lines (`--format justniffer -l '<format>'`), one per exchange.
//!
//! The format is text with `%keyword`s, as in justniffer's `-l`. Durations print in seconds
//! with six decimals, `-` stands for a value that does not apply (the handshake on a reused
//! connection, the originator of an exchange that is not the last), unknown text passes
//! through literally, `%%` is a percent sign, and an unknown `%keyword` is an error at
//! start-up. `%source.*` is always the client end, `%dest.*` the server end.

use std::{
    fmt::{self, Write as _},
    str::FromStr,
};

use chrono::{DateTime, Local};
use thiserror::Error;

use crate::model::ExchangeRecord;

/// The seed article's format: timing, reuse class and close originator per exchange.
pub(crate) const DEFAULT_FORMAT: &str = "%request.timestamp %source.ip %source.port %dest.ip %dest.port \
     c=%connection.time i=%idle.time.0 req=%request.time resp=%response.time \
     i2=%idle.time.1 s=%session.time %connection %close.originator";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Keyword {
    RequestTimestamp,
    SourceIp,
    SourcePort,
    DestIp,
    DestPort,
    ConnectionTime,
    IdleTime0,
    RequestTime,
    ResponseTime,
    ResponseTimeBegin,
    ResponseTimeEnd,
    IdleTime1,
    SessionTime,
    SessionRequests,
    Connection,
    CloseOriginator,
    RequestSize,
    ResponseSize,
}

const KEYWORDS: [(&str, Keyword); 18] = [
    ("request.timestamp", Keyword::RequestTimestamp),
    ("source.ip", Keyword::SourceIp),
    ("source.port", Keyword::SourcePort),
    ("dest.ip", Keyword::DestIp),
    ("dest.port", Keyword::DestPort),
    ("connection.time", Keyword::ConnectionTime),
    ("idle.time.0", Keyword::IdleTime0),
    ("request.time", Keyword::RequestTime),
    ("response.time", Keyword::ResponseTime),
    ("response.time.begin", Keyword::ResponseTimeBegin),
    ("response.time.end", Keyword::ResponseTimeEnd),
    ("idle.time.1", Keyword::IdleTime1),
    ("session.time", Keyword::SessionTime),
    ("session.requests", Keyword::SessionRequests),
    ("connection", Keyword::Connection),
    ("close.originator", Keyword::CloseOriginator),
    ("request.size", Keyword::RequestSize),
    ("response.size", Keyword::ResponseSize),
];

impl Keyword {
    fn name(self) -> &'static str {
        KEYWORDS
            .iter()
            .find(|(_, keyword)| *keyword == self)
            .map(|(name, _)| *name)
            .expect("every keyword has a name")
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Text(String),
    Keyword(Keyword),
}

/// A parsed `-l` format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineFormat {
    tokens: Vec<Token>,
}

/// A `%keyword` the line format does not know.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error(
    "unknown keyword `%{keyword}` in the line format; supported: {}",
    KEYWORDS.map(|(name, _)| format!("%{name}")).join(" ")
)]
pub struct UnknownKeyword {
    keyword: String,
}

impl FromStr for LineFormat {
    type Err = UnknownKeyword;

    fn from_str(format: &str) -> Result<Self, Self::Err> {
        let mut tokens = Vec::new();
        let mut text = String::new();
        let mut rest = format;
        while let Some(at) = rest.find('%') {
            text.push_str(&rest[..at]);
            rest = &rest[at + 1..];
            if let Some(after) = rest.strip_prefix('%') {
                text.push('%');
                rest = after;
                continue;
            }
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '_'))
                .unwrap_or(rest.len());
            // A sentence-ending dot is text, not part of the keyword.
            let name = rest[..len].trim_end_matches('.');
            let Some(&(_, keyword)) = KEYWORDS.iter().find(|(known, _)| *known == name) else {
                return Err(UnknownKeyword {
                    keyword: name.to_owned(),
                });
            };
            if !text.is_empty() {
                tokens.push(Token::Text(std::mem::take(&mut text)));
            }
            tokens.push(Token::Keyword(keyword));
            rest = &rest[name.len()..];
        }
        text.push_str(rest);
        if !text.is_empty() {
            tokens.push(Token::Text(text));
        }
        Ok(Self { tokens })
    }
}

/// The format as `-l` takes it: the `%keyword`s, and the text with each `%` doubled.
impl fmt::Display for LineFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for token in &self.tokens {
            match token {
                Token::Text(text) => f.write_str(&text.replace('%', "%%"))?,
                Token::Keyword(keyword) => write!(f, "%{}", keyword.name())?,
            }
        }
        Ok(())
    }
}

impl Default for LineFormat {
    fn default() -> Self {
        DEFAULT_FORMAT.parse().expect("the default format is valid")
    }
}

fn seconds(out: &mut String, ns: Option<u64>) {
    match ns {
        Some(ns) => {
            let _ = write!(
                out,
                "{}.{:06}",
                ns / 1_000_000_000,
                ns % 1_000_000_000 / 1_000
            );
        }
        None => out.push('-'),
    }
}

impl LineFormat {
    /// Appends one line (with its newline) for `exchange`, which started at `start` (wall clock).
    pub fn write(&self, out: &mut String, exchange: &ExchangeRecord, start: DateTime<Local>) {
        let (client, server) = exchange.addrs.client_server(exchange.role);
        for token in &self.tokens {
            match token {
                Token::Text(text) => out.push_str(text),
                Token::Keyword(keyword) => match keyword {
                    Keyword::RequestTimestamp => {
                        let _ = write!(out, "{}", start.format("%Y-%m-%d %H:%M:%S%.6f"));
                    }
                    Keyword::SourceIp => {
                        let _ = write!(out, "{}", client.ip());
                    }
                    Keyword::SourcePort => {
                        let _ = write!(out, "{}", client.port());
                    }
                    Keyword::DestIp => {
                        let _ = write!(out, "{}", server.ip());
                    }
                    Keyword::DestPort => {
                        let _ = write!(out, "{}", server.port());
                    }
                    Keyword::ConnectionTime => seconds(out, exchange.connect_ns),
                    Keyword::IdleTime0 => seconds(out, exchange.idle_before_ns),
                    Keyword::RequestTime => seconds(out, exchange.request_ns),
                    Keyword::ResponseTime => seconds(out, exchange.response_ns),
                    Keyword::ResponseTimeBegin => seconds(out, exchange.response_begin_ns),
                    Keyword::ResponseTimeEnd => seconds(out, exchange.response_end_ns),
                    Keyword::IdleTime1 => seconds(out, exchange.idle_after_ns),
                    Keyword::SessionTime => seconds(out, Some(exchange.session_ns)),
                    Keyword::SessionRequests => {
                        let _ = write!(out, "{}", exchange.seq);
                    }
                    Keyword::Connection => out.push_str(exchange.class.as_str()),
                    Keyword::CloseOriginator => match exchange.close_originator {
                        Some(originator) => out.push_str(originator.as_str()),
                        None => out.push('-'),
                    },
                    Keyword::RequestSize => {
                        let _ = write!(out, "{}", exchange.request_bytes);
                    }
                    Keyword::ResponseSize => {
                        let _ = write!(out, "{}", exchange.response_bytes);
                    }
                },
            }
        }
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::model::{Addrs, CloseOriginator, ExchangeClass, Role};

    fn exchange() -> ExchangeRecord {
        ExchangeRecord {
            conn_id: 1,
            role: Role::Server,
            addrs: Addrs::new(
                "127.0.0.1:8080".parse().unwrap(),
                "127.0.0.1:51000".parse().unwrap(),
            ),
            process: None,
            seq: 2,
            class: ExchangeClass::Last,
            start_ns: 0,
            connect_ns: None,
            idle_before_ns: None,
            request_ns: Some(0),
            response_begin_ns: Some(5_272_000),
            response_end_ns: Some(1_500),
            response_ns: Some(5_273_500),
            idle_after_ns: Some(1_417_703_000),
            session_ns: 7_151_756_999,
            request_bytes: 78,
            response_bytes: 612,
            close_originator: Some(CloseOriginator::Client),
            folded: false,
        }
    }

    fn render(format: &str) -> String {
        let format: LineFormat = format.parse().unwrap();
        let start = Local.with_ymd_and_hms(2026, 5, 12, 9, 11, 28).unwrap();
        let mut out = String::new();
        format.write(&mut out, &exchange(), start);
        out
    }

    #[test]
    fn renders_the_seed_format() {
        assert_eq!(
            render(DEFAULT_FORMAT),
            "2026-05-12 09:11:28.000000 127.0.0.1 51000 127.0.0.1 8080 c=- i=- req=0.000000 \
             resp=0.005273 i2=1.417703 s=7.151756 last client\n"
        );
    }

    #[test]
    fn every_keyword_and_literal_text() {
        assert_eq!(
            render(
                "%response.time.begin|%response.time.end|%session.requests|%request.size|%response.size|100%% done."
            ),
            "0.005272|0.000001|2|78|612|100% done.\n"
        );
        assert_eq!(render("port %dest.port."), "port 8080.\n");
    }

    #[test]
    fn unknown_keywords_are_errors() {
        let err = "x %request.header.connection"
            .parse::<LineFormat>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("`%request.header.connection`"), "{err}");
        assert!(
            err.contains("%close.originator"),
            "lists what is supported: {err}"
        );
        assert!("trailing %".parse::<LineFormat>().is_err());
    }
}
