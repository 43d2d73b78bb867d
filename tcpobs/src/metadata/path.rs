//! What a cgroup path says about the container and the pod a process runs in.
//!
//! Container runtimes and the kubelet name cgroups after what they hold, and those names are
//! all that tcpobs needs (no API server, no runtime socket). The shapes recognised, from
//! the two kubelet cgroup drivers and the runtimes behind them:
//!
//! | driver / runtime | path of a container's cgroup |
//! |---|---|
//! | systemd, containerd | `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid with _>.slice/cri-containerd-<id>.scope` |
//! | systemd, CRI-O | `.../kubepods-besteffort-pod<uid with _>.slice/crio-<id>.scope` |
//! | systemd, docker (cri-dockerd) | `.../kubepods-pod<uid with _>.slice/docker-<id>.scope` |
//! | cgroupfs, containerd or docker | `/kubepods/besteffort/pod<uid>/<id>` (guaranteed pods sit right under `/kubepods`) |
//! | cgroupfs, CRI-O | `/kubepods/burstable/pod<uid>/crio-<id>` |
//! | plain docker | `/system.slice/docker-<id>.scope` (systemd), `/docker/<id>` (cgroupfs) |
//! | podman | `/machine.slice/libpod-<id>.scope` |
//!
//! The same names appear in the cgroup v1 hierarchies and in the v2 tree, and may sit below
//! a prefix (kind nodes nest them under `kubelet.slice/kubelet-kubepods.slice`), so the
//! parser looks at every component rather than at fixed positions. Container ids are 64
//! lowercase hex digits; pod UIDs are UUIDs (or 32 hex digits for static pods), written with
//! `_` for `-` in systemd slice names.

/// The container and pod a cgroup path belongs to, as far as its names tell.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct PathInfo {
    /// The runtime's container id (64 hex digits).
    pub container_id: Option<String>,
    /// The Kubernetes pod UID, with dashes.
    pub pod_uid: Option<String>,
}

/// Scope and directory prefixes that runtimes put before a container id.
const RUNTIME_PREFIXES: [&str; 5] = [
    "cri-containerd-",
    "crio-",
    "docker-",
    "libpod-",
    "containerd-",
];

fn is_container_id(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A pod UID as the kubelet writes it: a UUID, or 32 hex digits for static pods.
fn pod_uid(text: &str) -> Option<String> {
    let uid = text.replace('_', "-");
    let hex_digits = uid.bytes().filter(u8::is_ascii_hexdigit).count();
    let valid = (uid.len() == 36 || uid.len() == 32)
        && hex_digits == 32
        && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    valid.then(|| uid.to_ascii_lowercase())
}

/// The container id in one path component, if it names a container.
fn container_in(component: &str) -> Option<&str> {
    let name = component.strip_suffix(".scope").unwrap_or(component);
    let id = RUNTIME_PREFIXES
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))
        .unwrap_or(name);
    is_container_id(id).then_some(id)
}

/// The pod UID in one path component, given whether a `kubepods` component came before it.
fn pod_in(component: &str, under_kubepods: bool) -> Option<String> {
    // systemd driver: `kubepods-<qos>-pod<uid>.slice`, `kubepods-pod<uid>.slice`, possibly
    // with a prefix (`kubelet-kubepods-...`).
    if let Some(name) = component.strip_suffix(".slice")
        && name.contains("kubepods")
        && let Some((_, uid)) = name.rsplit_once("-pod")
    {
        return pod_uid(uid);
    }
    // cgroupfs driver: `/kubepods[/<qos>]/pod<uid>/`.
    if under_kubepods && let Some(uid) = component.strip_prefix("pod") {
        return pod_uid(uid);
    }
    None
}

/// Reads the container id and pod UID out of a cgroup path (absolute or relative to the
/// cgroup root). The deepest container component wins: processes may sit in a sub-cgroup of
/// their container's (`crio-<id>.scope/container`).
pub(super) fn parse(path: &str) -> PathInfo {
    let mut info = PathInfo::default();
    let mut under_kubepods = false;
    for component in path.split('/').filter(|c| !c.is_empty()) {
        if let Some(uid) = pod_in(component, under_kubepods) {
            info.pod_uid = Some(uid);
        } else if let Some(id) = container_in(component) {
            info.container_id = Some(id.to_owned());
        }
        under_kubepods |= component == "kubepods" || component.starts_with("kubepods");
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0f4e7b1c2d3a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9012345678";
    const UID: &str = "5c0a6d32-8a4f-4f0e-9b7d-2c1e3f4a5b6c";
    const UID_SLICE: &str = "5c0a6d32_8a4f_4f0e_9b7d_2c1e3f4a5b6c";

    fn expect(path: &str, container: Option<&str>, pod: Option<&str>) {
        let info = parse(path);
        assert_eq!(
            info.container_id.as_deref(),
            container,
            "container id of {path}"
        );
        assert_eq!(info.pod_uid.as_deref(), pod, "pod uid of {path}");
    }

    #[test]
    fn cgroup_v2_systemd_driver_for_each_runtime() {
        for (qos, runtime) in [
            (
                "kubepods-burstable.slice/kubepods-burstable-",
                "cri-containerd",
            ),
            ("kubepods-besteffort.slice/kubepods-besteffort-", "crio"),
            ("kubepods-", "docker"),
        ] {
            expect(
                &format!("/kubepods.slice/{qos}pod{UID_SLICE}.slice/{runtime}-{ID}.scope"),
                Some(ID),
                Some(UID),
            );
        }
    }

    #[test]
    fn cgroup_v1_cgroupfs_driver_for_each_runtime() {
        // What /proc/<pid>/cgroup shows in the v1 `memory` or `cpu` hierarchy.
        expect(
            &format!("/kubepods/besteffort/pod{UID}/{ID}"),
            Some(ID),
            Some(UID),
        );
        expect(
            &format!("/kubepods/burstable/pod{UID}/crio-{ID}"),
            Some(ID),
            Some(UID),
        );
        // Guaranteed pods have no QoS level.
        expect(&format!("/kubepods/pod{UID}/{ID}"), Some(ID), Some(UID));
    }

    #[test]
    fn cgroup_v1_systemd_driver_and_v2_cgroupfs_driver() {
        // The systemd driver names v1 hierarchies as it names the v2 tree.
        expect(
            &format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SLICE}.slice/docker-{ID}.scope"
            ),
            Some(ID),
            Some(UID),
        );
        // cgroupfs driver on a v2 host.
        expect(
            &format!("/kubepods/burstable/pod{UID}/{ID}"),
            Some(ID),
            Some(UID),
        );
    }

    #[test]
    fn nested_and_sub_cgroups() {
        // kind nodes: the node's own kubelet slice around the pods.
        expect(
            &format!(
                "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_SLICE}.slice/cri-containerd-{ID}.scope"
            ),
            Some(ID),
            Some(UID),
        );
        // A process in a sub-cgroup of its container.
        expect(
            &format!("/kubepods.slice/kubepods-pod{UID_SLICE}.slice/crio-{ID}.scope/container"),
            Some(ID),
            Some(UID),
        );
        // The pod's own cgroup (the sandbox's parent), without a container.
        expect(
            &format!("/kubepods.slice/kubepods-pod{UID_SLICE}.slice"),
            None,
            Some(UID),
        );
    }

    #[test]
    fn static_pods_have_hex_uids() {
        let uid = "6ef2c7fa5a2c4ba8a0d3c4c1c0f9a1e2";
        expect(
            &format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/cri-containerd-{ID}.scope"
            ),
            Some(ID),
            Some(uid),
        );
    }

    #[test]
    fn containers_outside_kubernetes() {
        expect(&format!("/system.slice/docker-{ID}.scope"), Some(ID), None);
        expect(&format!("/docker/{ID}"), Some(ID), None);
        expect(&format!("/machine.slice/libpod-{ID}.scope"), Some(ID), None);
    }

    #[test]
    fn other_cgroups_name_nothing() {
        for path in [
            "/",
            "",
            "/system.slice/nginx.service",
            "/user.slice/user-1000.slice/session-3.scope",
            // conmon, CRI-O's monitor, is not the container.
            &format!("/kubepods.slice/kubepods-pod{UID_SLICE}.slice/crio-conmon-{ID}.scope"),
            // Too short, or not hex.
            "/docker/0f4e7b1c2d3a",
            &format!("/docker/{}", ID.replace('0', "g")),
            // A `pod...` directory outside kubepods is not a pod.
            &format!("/system.slice/pod{UID}"),
            "/kubepods.slice/kubepods-podnothex.slice",
        ] {
            let info = parse(path);
            assert!(
                info.container_id.is_none()
                    && (info.pod_uid.is_none() || path.contains("crio-conmon")),
                "{path}: {info:?}"
            );
        }
    }
}
