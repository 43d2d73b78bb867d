//! Pod namespace and name from the kubelet's log directories.
//!
//! The kubelet keeps one directory per pod under `/var/log/pods`, named
//! `<namespace>_<name>_<uid>`, created before the pod's containers start. Neither a namespace
//! (a DNS label) nor a pod name (a DNS subdomain) can contain `_`, so the name splits
//! unambiguously, and reading one directory gives every pod on the node without asking the
//! API server.

use std::{collections::HashMap, fs, io, path::Path, sync::Arc};

/// A pod's namespace and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PodName {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

/// `<namespace>_<name>_<uid>` → (uid, namespace, name).
pub(super) fn parse_dir_name(dir: &str) -> Option<(&str, &str, &str)> {
    let (namespace, rest) = dir.split_once('_')?;
    let (name, uid) = rest.rsplit_once('_')?;
    let valid = |part: &str| !part.is_empty() && !part.contains('_');
    (valid(namespace) && valid(name) && valid(uid)).then_some((uid, namespace, name))
}

/// Reads the pod directories under `root`, at most `limit` of them: pod UID → name.
pub(super) fn read(root: &Path, limit: usize) -> io::Result<HashMap<Arc<str>, PodName>> {
    let mut pods = HashMap::new();
    for entry in fs::read_dir(root)? {
        if pods.len() >= limit {
            break;
        }
        let Ok(entry) = entry else { continue };
        let file_name = entry.file_name();
        let Some((uid, namespace, name)) = file_name.to_str().and_then(parse_dir_name) else {
            continue;
        };
        pods.insert(
            Arc::from(uid.to_ascii_lowercase()),
            PodName {
                namespace: Arc::from(namespace),
                name: Arc::from(name),
            },
        );
    }
    Ok(pods)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_names_split_on_underscores() {
        assert_eq!(
            parse_dir_name(
                "kube-system_coredns-7db6d8ff4d-x2x9z_5c0a6d32-8a4f-4f0e-9b7d-2c1e3f4a5b6c"
            ),
            Some((
                "5c0a6d32-8a4f-4f0e-9b7d-2c1e3f4a5b6c",
                "kube-system",
                "coredns-7db6d8ff4d-x2x9z"
            ))
        );
        // Static pods: a 32-digit hash as UID, dots in the name.
        assert_eq!(
            parse_dir_name("kube-system_etcd-node.example_6ef2c7fa5a2c4ba8a0d3c4c1c0f9a1e2"),
            Some((
                "6ef2c7fa5a2c4ba8a0d3c4c1c0f9a1e2",
                "kube-system",
                "etcd-node.example"
            ))
        );
        for bad in [
            "",
            "default",
            "default_web",
            "default__uid",
            "_web_uid",
            "a_b_c_d",
        ] {
            assert_eq!(parse_dir_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn reads_a_pods_directory() {
        let root = std::env::temp_dir().join(format!("tcpobs-pods-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        for dir in [
            "default_web-0_1111",
            "monitoring_tcpobs-abcde_2222",
            "not-a-pod",
        ] {
            fs::create_dir_all(root.join(dir)).unwrap();
        }
        let pods = read(&root, 100).unwrap();
        assert_eq!(pods.len(), 2, "{pods:?}");
        assert_eq!(&*pods["2222"].namespace, "monitoring");
        assert_eq!(&*pods["2222"].name, "tcpobs-abcde");
        assert_eq!(read(&root, 1).unwrap().len(), 1, "the limit holds");
        fs::remove_dir_all(&root).unwrap();
        assert!(read(&root, 100).is_err());
    }
}
