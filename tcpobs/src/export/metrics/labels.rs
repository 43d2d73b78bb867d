//! Metric labels, and the optional dimensions
//! (`--label local_port|remote_port|comm|pod|namespace`).
//!
//! By default every label is bounded: role, class, close originator, close kind, reason,
//! phase. An optional dimension adds a label to the per-connection families (handshake,
//! duration, exchanges and the per-exchange histograms, opened/closed/exchange counters).
//! Each dimension keeps its own values only for an allowlist (`remote_port=80,443`) or for the
//! N busiest values seen so far (`comm=top:10`; default top 10); everything else is `other`.
//! `pod` and `namespace` come from the container metadata ([`crate::metadata`]); a process outside
//! any pod (or unknown) has the empty value, which is always kept.
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
use thiserror::Error;

use crate::{
    export::output::json::decimal,
    metadata::Metadata,
    model::{Addrs, Process},
};

/// An optional label dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Dim {
    LocalPort,
    RemotePort,
    Comm,
    Pod,
    Namespace,
}

impl Dim {
    const ALL: [Self; 5] = [
        Self::LocalPort,
        Self::RemotePort,
        Self::Comm,
        Self::Pod,
        Self::Namespace,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::LocalPort => "local_port",
            Self::RemotePort => "remote_port",
            Self::Comm => "comm",
            Self::Pod => "pod",
            Self::Namespace => "namespace",
        }
    }
}

/// Which values of a dimension get their own label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Keep {
    /// Exactly these.
    Allow(Vec<String>),
    /// The N busiest seen so far.
    Top(usize),
}

/// One `--label` flag: `NAME`, `NAME=top:N` or `NAME=v1,v2,...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LabelSpec {
    pub dim: Dim,
    pub keep: Keep,
}

/// Why a `--label` flag does not parse.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub(crate) enum LabelSpecError {
    #[error("unknown label `{0}`: use local_port, remote_port, comm, pod or namespace")]
    UnknownLabel(String),
    #[error("`{0}`: top:N needs N from 1 to 1000")]
    Top(String),
    #[error("`{0}`: empty value in the allowlist")]
    EmptyValue(String),
}

impl FromStr for LabelSpec {
    type Err = LabelSpecError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let (name, keep) = value.split_once('=').unwrap_or((value, "top:10"));
        // Trimmed as the allowlist's values are, so that ` top:5` is not the value `top:5`.
        let keep = keep.trim();
        let dim = Dim::ALL
            .into_iter()
            .find(|dim| dim.name() == name)
            .ok_or_else(|| LabelSpecError::UnknownLabel(name.to_owned()))?;
        let keep = match keep.strip_prefix("top:") {
            Some(n) => Keep::Top(
                n.parse()
                    .ok()
                    .filter(|&n| (1..=1000).contains(&n))
                    .ok_or_else(|| LabelSpecError::Top(keep.to_owned()))?,
            ),
            None => {
                let values: Vec<String> = keep.split(',').map(|v| v.trim().to_owned()).collect();
                if values.iter().any(String::is_empty) {
                    return Err(LabelSpecError::EmptyValue(value.to_owned()));
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
pub(crate) struct Dims([Option<Arc<str>>; 5]);

/// Whether every dimension of `specs` follows from a socket's cgroup alone (`pod`,
/// `namespace`), so that the kernel can fold exchanges by label slot ([`super::slots`]).
pub(crate) fn by_cgroup(specs: &[LabelSpec]) -> bool {
    !specs.is_empty()
        && specs
            .iter()
            .all(|spec| matches!(spec.dim, Dim::Pod | Dim::Namespace))
}

impl Dims {
    /// Only a `namespace` value.
    #[cfg(test)]
    pub(crate) fn of_namespace(value: Arc<str>) -> Self {
        let mut dims = Self::default();
        dims.0[Dim::Namespace as usize] = Some(value);
        dims
    }

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
pub(crate) struct ConnLabels<const N: usize> {
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
pub(crate) type Fixed<const N: usize> = [(&'static str, &'static str); N];

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
    /// The empty value (`pod` and `namespace` outside any pod), always kept.
    empty: Arc<str>,
    /// `other`, for the values not kept.
    other: Arc<str>,
}

impl DimState {
    /// The label value of `raw`; `counted`: the observation counts towards the top N.
    fn value(&mut self, raw: &str, counted: bool) -> Arc<str> {
        if raw.is_empty() {
            return Arc::clone(&self.empty);
        }
        if let Keep::Top(n) = self.keep
            && counted
        {
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
            .unwrap_or_else(|| Arc::clone(&self.other))
    }
}

/// Maps connections to dimension values, enforcing allowlists, top-N and the series cap.
#[derive(Debug)]
pub(crate) struct LabelPolicy {
    dims: Vec<DimState>,
    cap: usize,
    admitted: HashSet<Dims>,
    other: Dims,
}

impl LabelPolicy {
    pub(crate) fn new(specs: &[LabelSpec], cap: usize) -> Self {
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
                empty: Arc::from(""),
                other: Arc::from("other"),
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
    pub(crate) fn other(&self) -> Dims {
        self.other.clone()
    }

    /// Dimension values for a connection; `metadata` gives the `pod` and `namespace` values.
    pub(crate) fn dims(
        &mut self,
        addrs: &Addrs,
        process: Option<&Process>,
        metadata: Option<&Metadata>,
    ) -> Dims {
        self.resolve(Some(addrs), process, metadata, true)
    }

    /// The values a process's connections have now, for dimensions that depend on the
    /// process's cgroup alone (`pod`, `namespace`: [`by_cgroup`]), without counting towards
    /// the top N (a look, not a connection).
    pub(crate) fn cgroup_dims(&mut self, process: &Process, metadata: Option<&Metadata>) -> Dims {
        self.resolve(None, Some(process), metadata, false)
    }

    fn resolve(
        &mut self,
        addrs: Option<&Addrs>,
        process: Option<&Process>,
        metadata: Option<&Metadata>,
        counted: bool,
    ) -> Dims {
        if self.dims.is_empty() {
            return Dims::default();
        }
        let mut dims = Dims::default();
        // Resolved once, and only if a dimension needs it; values are borrowed, not copied.
        let mut meta: Option<Option<Arc<crate::metadata::Meta>>> = None;
        for state in &mut self.dims {
            let mut digits = [0u8; 20];
            let raw = match state.dim {
                Dim::LocalPort => addrs.map_or("", |addrs| {
                    decimal(u64::from(addrs.local().port()), &mut digits)
                }),
                Dim::RemotePort => addrs.map_or("", |addrs| {
                    decimal(u64::from(addrs.remote().port()), &mut digits)
                }),
                Dim::Comm => process.map_or("unknown", |p| p.comm.as_str()),
                Dim::Pod | Dim::Namespace => {
                    let meta = meta
                        .get_or_insert_with(|| metadata.and_then(|m| m.lookup(process)))
                        .as_deref();
                    let value = if state.dim == Dim::Pod {
                        meta.and_then(crate::metadata::Meta::pod_name)
                    } else {
                        meta.and_then(crate::metadata::Meta::namespace)
                    };
                    value.unwrap_or_default()
                }
            };
            dims.0[state.dim as usize] = Some(state.value(raw, counted));
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
    fn ports_are_written_in_decimal() {
        for port in [0u16, 7, 80, 443, 8080, 65535] {
            assert_eq!(decimal(u64::from(port), &mut [0; 20]), port.to_string());
        }
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
        assert!("container".parse::<LabelSpec>().is_err());
        assert_eq!(
            "namespace=default,kube-system"
                .parse::<LabelSpec>()
                .unwrap()
                .to_string(),
            "namespace=default,kube-system"
        );
        assert!("comm=top:0".parse::<LabelSpec>().is_err());
        assert!("comm=a,,b".parse::<LabelSpec>().is_err());
    }

    /// Found by the config proptests: `comm= top:` was an allowlist of the value `top:`, which
    /// printed as `comm=top:`, which is refused; and `comm= top:5` kept the value `top:5`.
    #[test]
    fn top_n_after_a_space_is_top_n() {
        assert_eq!(
            "comm= top:5".parse::<LabelSpec>().map(|spec| spec.keep),
            Ok(Keep::Top(5))
        );
        assert_eq!(
            "comm= top:".parse::<LabelSpec>(),
            Err(LabelSpecError::Top("top:".to_owned()))
        );
        assert_eq!(
            "comm= a , b "
                .parse::<LabelSpec>()
                .map(|spec| spec.to_string()),
            Ok("comm=a,b".to_owned())
        );
    }

    #[test]
    fn allowlist_and_other() {
        let mut policy = LabelPolicy::new(&["remote_port=80".parse().unwrap()], 100);
        assert_eq!(
            values(&policy.dims(&addrs(5000, 80), None, None)),
            [None, Some("80"), None, None, None]
        );
        assert_eq!(
            values(&policy.dims(&addrs(5000, 22), None, None)),
            [None, Some("other"), None, None, None]
        );
    }

    #[test]
    fn top_n_keeps_the_busiest() {
        let mut policy = LabelPolicy::new(&["local_port=top:1".parse().unwrap()], 100);
        for _ in 0..300 {
            policy.dims(&addrs(443, 1), None, None);
        }
        policy.dims(&addrs(8080, 1), None, None);
        assert_eq!(
            values(&policy.dims(&addrs(443, 1), None, None)),
            [Some("443"), None, None, None, None]
        );
        assert_eq!(
            values(&policy.dims(&addrs(8080, 1), None, None)),
            [Some("other"), None, None, None, None]
        );
    }

    #[test]
    fn top_n_makes_room_for_newcomers() {
        let mut policy = LabelPolicy::new(&["remote_port=top:1".parse().unwrap()], 100_000);
        // Thousands of one-off ports fill the counting table...
        for port in 1..=(MAX_COUNTED as u16 + 100) {
            policy.dims(&addrs(1, port), None, None);
        }
        // ...and a busy newcomer still gets counted and kept.
        for _ in 0..(2 * RERANK_EVERY) {
            policy.dims(&addrs(1, 60_000), None, None);
        }
        assert_eq!(
            values(&policy.dims(&addrs(1, 60_000), None, None))[1],
            Some("60000")
        );
    }

    /// `pod` and `namespace` come from the metadata; processes outside pods get the empty
    /// value, and a pod outside the allowlist is `other`.
    #[test]
    fn pod_and_namespace_from_the_metadata() {
        use std::{fs, os::unix::fs::MetadataExt as _};

        use crate::metadata::{MetaRoots, Metadata};
        let base = std::env::temp_dir().join(format!("tcpobs-labels-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let uid = "5c0a6d32-8a4f-4f0e-9b7d-2c1e3f4a5b6c";
        let container = base.join(format!(
            "cgroup/kubepods/burstable/pod{uid}/{}",
            "ab".repeat(32)
        ));
        fs::create_dir_all(&container).unwrap();
        fs::create_dir_all(base.join(format!("pods/shop_web-0_{uid}"))).unwrap();
        fs::create_dir_all(base.join("cgroup/system.slice")).unwrap();
        fs::create_dir_all(base.join("proc")).unwrap();
        let metadata = Metadata::new(MetaRoots {
            cgroup: base.join("cgroup"),
            pod_logs: base.join("pods"),
            proc: base.join("proc"),
        });
        let process = |dir: &std::path::Path| Process {
            cgroup: fs::metadata(dir).unwrap().ino(),
            ..Process::default()
        };
        let in_pod = process(&container);
        let on_host = process(&base.join("cgroup/system.slice"));
        let mut policy = LabelPolicy::new(
            &["namespace".parse().unwrap(), "pod=web-0".parse().unwrap()],
            100,
        );
        let dims = policy.dims(&addrs(1, 2), Some(&in_pod), Some(&metadata));
        assert_eq!(values(&dims)[3..], [Some("web-0"), Some("shop")]);
        let dims = policy.dims(&addrs(1, 2), Some(&on_host), Some(&metadata));
        assert_eq!(values(&dims)[3..], [Some(""), Some("")]);
        let dims = policy.dims(&addrs(1, 2), None, Some(&metadata));
        assert_eq!(values(&dims)[3..], [Some(""), Some("")]);
        let mut policy = LabelPolicy::new(&["pod=api-0".parse().unwrap()], 100);
        let dims = policy.dims(&addrs(1, 2), Some(&in_pod), Some(&metadata));
        assert_eq!(values(&dims)[3], Some("other"));
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_port_scan_hits_the_series_cap() {
        let mut policy = LabelPolicy::new(&["remote_port=top:1000".parse().unwrap()], 5);
        let distinct: HashSet<Dims> = (1..=2000)
            .map(|port| policy.dims(&addrs(1, port), None, None))
            .collect();
        assert!(distinct.len() <= 6, "{} label sets", distinct.len());
        assert!(distinct.iter().any(|d| values(d)[1] == Some("other")));
        assert_eq!(
            LabelPolicy::new(&[], 5).dims(&addrs(1, 2), None, None),
            Dims::default()
        );
    }
}
