//! Metric labels, and the optional dimensions (`--label local_port|remote_port|comm`).
//!
//! By default every label is bounded: role, class, close originator, close kind, reason,
//! phase. An optional dimension adds a label to the per-connection families (handshake,
//! duration, exchanges and the per-exchange histograms, opened/closed/exchange counters).
//! Each dimension keeps its own values only for an allowlist (`remote_port=80,443`) or for the
//! N busiest values seen so far (`comm=top:10`; default top 10); everything else is `other`.
//! On top of that a global cap (`--label-series-cap`, default 100) limits how many distinct
//! combinations of dimension values exist; past it every new combination becomes `other`, so
//! a port scan cannot explode cardinality.
//!
//! Cost: each admitted combination adds, per role, one series to each counter and
//! `buckets + 2` series to each of the 8 histograms (about 25 buckets), so roughly 230
//! series per combination and role. The default cap bounds that at about 23,000 series
//! per role.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    str::FromStr,
    sync::Arc,
};

use prometheus_client::encoding::{EncodeLabel as _, EncodeLabelSet, LabelSetEncoder};

use crate::model::{Addrs, Process};

/// An optional label dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    LocalPort,
    RemotePort,
    Comm,
}

impl Dim {
    const ALL: [Self; 3] = [Self::LocalPort, Self::RemotePort, Self::Comm];

    pub fn name(self) -> &'static str {
        match self {
            Self::LocalPort => "local_port",
            Self::RemotePort => "remote_port",
            Self::Comm => "comm",
        }
    }
}

/// Which values of a dimension get their own label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Keep {
    /// Exactly these.
    Allow(Vec<String>),
    /// The N busiest seen so far.
    Top(usize),
}

/// One `--label` flag: `NAME`, `NAME=top:N` or `NAME=v1,v2,...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelSpec {
    pub dim: Dim,
    pub keep: Keep,
}

impl FromStr for LabelSpec {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let (name, keep) = value.split_once('=').unwrap_or((value, "top:10"));
        let dim = Dim::ALL
            .into_iter()
            .find(|dim| dim.name() == name)
            .ok_or_else(|| {
                format!("unknown label `{name}`: use local_port, remote_port or comm")
            })?;
        let keep = match keep.strip_prefix("top:") {
            Some(n) => Keep::Top(
                n.parse()
                    .ok()
                    .filter(|&n| (1..=1000).contains(&n))
                    .ok_or_else(|| format!("`{keep}`: top:N needs N from 1 to 1000"))?,
            ),
            None => {
                let values: Vec<String> = keep.split(',').map(|v| v.trim().to_owned()).collect();
                if values.iter().any(String::is_empty) {
                    return Err(format!("`{value}`: empty value in the allowlist"));
                }
                Keep::Allow(values)
            }
        };
        Ok(Self { dim, keep })
    }
}

impl fmt::Display for LabelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.keep {
            Keep::Allow(values) => write!(f, "{}={}", self.dim.name(), values.join(",")),
            Keep::Top(n) => write!(f, "{}=top:{n}", self.dim.name()),
        }
    }
}

/// Values of the enabled dimensions (`None` for a dimension that is off).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Dims([Option<Arc<str>>; 3]);

impl Dims {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), fmt::Error> {
        for (dim, value) in Dim::ALL.iter().zip(&self.0) {
            if let Some(value) = value {
                (dim.name(), value.as_ref()).encode(encoder.encode_label())?;
            }
        }
        Ok(())
    }
}

/// Label set of a per-connection family: fixed labels plus the optional dimensions.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConnLabels<const N: usize> {
    pub fixed: [(&'static str, &'static str); N],
    pub dims: Dims,
}

impl<const N: usize> EncodeLabelSet for ConnLabels<N> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), fmt::Error> {
        for label in &self.fixed {
            label.encode(encoder.encode_label())?;
        }
        self.dims.encode(encoder)
    }
}

/// Label set of the bounded families: fixed labels only.
pub type Fixed<const N: usize> = [(&'static str, &'static str); N];

/// How often (in observations) a top-N dimension re-ranks its values.
const RERANK_EVERY: u64 = 256;
/// At most this many distinct values are counted per top-N dimension.
const MAX_COUNTED: usize = 4096;

#[derive(Debug)]
struct DimState {
    dim: Dim,
    keep: Keep,
    /// Interned values with their own label.
    kept: HashSet<Arc<str>>,
    counts: HashMap<Arc<str>, u64>,
    observed: u64,
}

impl DimState {
    fn value(&mut self, raw: &str) -> Arc<str> {
        if let Keep::Top(n) = self.keep {
            if let Some(count) = self.counts.get_mut(raw) {
                *count += 1;
            } else {
                if self.counts.len() >= MAX_COUNTED {
                    // Make room for newcomers: forget the less busy half.
                    let mut counts: Vec<u64> = self.counts.values().copied().collect();
                    counts.sort_unstable();
                    let median = counts[counts.len() / 2];
                    self.counts
                        .retain(|value, count| *count > median || self.kept.contains(value));
                }
                self.counts.insert(Arc::from(raw), 1);
            }
            self.observed += 1;
            if self.observed % RERANK_EVERY == 1 {
                let mut ranked: Vec<_> = self.counts.iter().collect();
                ranked.sort_unstable_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
                self.kept = ranked
                    .into_iter()
                    .take(n)
                    .map(|(v, _)| Arc::clone(v))
                    .collect();
            }
        }
        self.kept
            .get(raw)
            .cloned()
            .unwrap_or_else(|| Arc::from("other"))
    }
}

/// Maps connections to dimension values, enforcing allowlists, top-N and the series cap.
#[derive(Debug)]
pub struct LabelPolicy {
    dims: Vec<DimState>,
    cap: usize,
    admitted: HashSet<Dims>,
    other: Dims,
}

impl LabelPolicy {
    pub fn new(specs: &[LabelSpec], cap: usize) -> Self {
        let dims: Vec<DimState> = specs
            .iter()
            .map(|spec| DimState {
                dim: spec.dim,
                kept: match &spec.keep {
                    Keep::Allow(values) => values.iter().map(|v| Arc::from(v.as_str())).collect(),
                    Keep::Top(_) => HashSet::new(),
                },
                keep: spec.keep.clone(),
                counts: HashMap::new(),
                observed: 0,
            })
            .collect();
        let mut other = Dims::default();
        for state in &dims {
            other.0[state.dim as usize] = Some(Arc::from("other"));
        }
        Self {
            dims,
            cap,
            admitted: HashSet::new(),
            other,
        }
    }

    /// Dimension values that stand for everything not kept (no labels when no dimension
    /// is on).
    pub fn other(&self) -> Dims {
        self.other.clone()
    }

    /// Dimension values for a connection.
    pub fn dims(&mut self, addrs: &Addrs, process: Option<&Process>) -> Dims {
        if self.dims.is_empty() {
            return Dims::default();
        }
        let mut dims = Dims::default();
        for state in &mut self.dims {
            let raw = match state.dim {
                Dim::LocalPort => addrs.local().port().to_string(),
                Dim::RemotePort => addrs.remote().port().to_string(),
                Dim::Comm => process.map_or_else(|| "unknown".to_owned(), |p| p.comm.to_string()),
            };
            dims.0[state.dim as usize] = Some(state.value(&raw));
        }
        if self.admitted.contains(&dims) {
            return dims;
        }
        if self.admitted.len() < self.cap {
            self.admitted.insert(dims.clone());
            return dims;
        }
        self.other.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(local: u16, remote: u16) -> Addrs {
        Addrs::new(
            ([127, 0, 0, 1], local).into(),
            ([127, 0, 0, 1], remote).into(),
        )
    }

    fn values(dims: &Dims) -> Vec<Option<&str>> {
        dims.0.iter().map(|v| v.as_deref()).collect()
    }

    #[test]
    fn specs_parse() {
        let spec: LabelSpec = "remote_port=80,443".parse().unwrap();
        assert_eq!(spec.keep, Keep::Allow(vec!["80".into(), "443".into()]));
        assert_eq!("comm".parse::<LabelSpec>().unwrap().keep, Keep::Top(10));
        assert_eq!(
            "local_port=top:3".parse::<LabelSpec>().unwrap().to_string(),
            "local_port=top:3"
        );
        assert!("pod".parse::<LabelSpec>().is_err());
        assert!("comm=top:0".parse::<LabelSpec>().is_err());
        assert!("comm=a,,b".parse::<LabelSpec>().is_err());
    }

    #[test]
    fn allowlist_and_other() {
        let mut policy = LabelPolicy::new(&["remote_port=80".parse().unwrap()], 100);
        assert_eq!(
            values(&policy.dims(&addrs(5000, 80), None)),
            [None, Some("80"), None]
        );
        assert_eq!(
            values(&policy.dims(&addrs(5000, 22), None)),
            [None, Some("other"), None]
        );
    }

    #[test]
    fn top_n_keeps_the_busiest() {
        let mut policy = LabelPolicy::new(&["local_port=top:1".parse().unwrap()], 100);
        for _ in 0..300 {
            policy.dims(&addrs(443, 1), None);
        }
        policy.dims(&addrs(8080, 1), None);
        assert_eq!(
            values(&policy.dims(&addrs(443, 1), None)),
            [Some("443"), None, None]
        );
        assert_eq!(
            values(&policy.dims(&addrs(8080, 1), None)),
            [Some("other"), None, None]
        );
    }

    #[test]
    fn top_n_makes_room_for_newcomers() {
        let mut policy = LabelPolicy::new(&["remote_port=top:1".parse().unwrap()], 100_000);
        // Thousands of one-off ports fill the counting table...
        for port in 1..=(MAX_COUNTED as u16 + 100) {
            policy.dims(&addrs(1, port), None);
        }
        // ...and a busy newcomer still gets counted and kept.
        for _ in 0..(2 * RERANK_EVERY) {
            policy.dims(&addrs(1, 60_000), None);
        }
        assert_eq!(
            values(&policy.dims(&addrs(1, 60_000), None))[1],
            Some("60000")
        );
    }

    #[test]
    fn a_port_scan_hits_the_series_cap() {
        let mut policy = LabelPolicy::new(&["remote_port=top:1000".parse().unwrap()], 5);
        let distinct: HashSet<Dims> = (1..=2000)
            .map(|port| policy.dims(&addrs(1, port), None))
            .collect();
        assert!(distinct.len() <= 6, "{} label sets", distinct.len());
        assert!(distinct.iter().any(|d| values(d)[1] == Some("other")));
        assert_eq!(
            LabelPolicy::new(&[], 5).dims(&addrs(1, 2), None),
            Dims::default()
        );
    }
}
