//! tracefs: where classic tracepoints live, and the layout of their records.
//!
//! A classic tracepoint program reads its record at byte offsets that the kernel publishes in
//! `events/<category>/<name>/format`. They are stable in practice, but not across every
//! kernel (`tcp_send_reset` changed shape in 6.x), so tcpobs reads them instead of assuming.

use std::{
    fs,
    path::{Path, PathBuf},
};

use thiserror::Error;

pub(super) const TRACEFS: &str = "/sys/kernel/tracing";

#[derive(Debug, Error)]
pub(super) enum TracefsError {
    #[error(
        "tracefs is not mounted at {TRACEFS} and mounting it failed ({0}); mount it with \
         `mount -t tracefs nodev {TRACEFS}`"
    )]
    Mount(std::io::Error),
    #[error("tracepoint {category}:{name} does not exist on this kernel ({path}: {source})")]
    NoTracepoint {
        category: String,
        name: String,
        path: String,
        source: std::io::Error,
    },
    #[error("tracepoint {category}:{name} has no field `{field}` in its format")]
    NoField {
        category: String,
        name: String,
        field: String,
    },
}

/// Mounts tracefs at [`TRACEFS`] unless something is already there.
pub(super) fn ensure_mounted() -> Result<(), TracefsError> {
    let root = Path::new(TRACEFS);
    if root.join("events").is_dir() {
        return Ok(());
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: all pointers are valid NUL-terminated strings; data is NULL as tracefs allows.
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(TracefsError::Mount(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// The parsed `format` file of one tracepoint.
#[derive(Debug)]
pub(super) struct Format {
    category: String,
    name: String,
    /// (field name, byte offset, size)
    fields: Vec<(String, u16, u16)>,
}

impl Format {
    /// Reads `events/<category>/<name>/format` under `root` (normally [`TRACEFS`]).
    pub(super) fn read(root: &Path, category: &str, name: &str) -> Result<Self, TracefsError> {
        let path: PathBuf = [
            root,
            Path::new("events"),
            Path::new(category),
            Path::new(name),
        ]
        .iter()
        .collect::<PathBuf>()
        .join("format");
        let text = fs::read_to_string(&path).map_err(|source| TracefsError::NoTracepoint {
            category: category.to_owned(),
            name: name.to_owned(),
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self::parse(category, name, &text))
    }

    /// Parses lines like `\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;`.
    pub(super) fn parse(category: &str, name: &str, text: &str) -> Self {
        let fields = text
            .lines()
            .filter_map(|line| {
                let mut parts = line.trim().split(';').map(str::trim);
                let declaration = parts.next()?.strip_prefix("field:")?;
                let offset = parts.next()?.strip_prefix("offset:")?.parse().ok()?;
                let size = parts.next()?.strip_prefix("size:")?.parse().ok()?;
                // The name is the last word, minus any array suffix: `__u8 saddr[4]`.
                let field = declaration
                    .rsplit([' ', '*'])
                    .next()?
                    .split('[')
                    .next()?
                    .to_owned();
                Some((field, offset, size))
            })
            .collect();
        Self {
            category: category.to_owned(),
            name: name.to_owned(),
            fields,
        }
    }

    /// Byte offset of `field` in the record.
    pub(super) fn offset(&self, field: &str) -> Result<u16, TracefsError> {
        self.fields
            .iter()
            .find(|(name, _, _)| name == field)
            .map(|&(_, offset, _)| offset)
            .ok_or_else(|| TracefsError::NoField {
                category: self.category.clone(),
                name: self.name.clone(),
                field: field.to_owned(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SET_STATE: &str = "name: inet_sock_set_state
ID: 1234
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;

print fmt: \"family=%s\", REC->family
";

    #[test]
    fn parses_field_offsets() {
        let format = Format::parse("sock", "inet_sock_set_state", SET_STATE);
        assert_eq!(format.offset("skaddr").unwrap(), 8);
        assert_eq!(format.offset("oldstate").unwrap(), 16);
        assert_eq!(format.offset("newstate").unwrap(), 20);
        assert_eq!(format.offset("saddr_v6").unwrap(), 40);
        assert_eq!(format.offset("common_type").unwrap(), 0);
    }

    #[test]
    fn names_the_missing_field() {
        let format = Format::parse("sock", "inet_sock_set_state", SET_STATE);
        let err = format.offset("sk").unwrap_err().to_string();
        assert!(
            err.contains("sock:inet_sock_set_state") && err.contains("`sk`"),
            "{err}"
        );
    }

    #[test]
    fn missing_tracepoint_is_named() {
        let err = Format::read(Path::new("/nonexistent"), "sock", "nope").unwrap_err();
        assert!(
            err.to_string().contains("sock:nope does not exist"),
            "{err}"
        );
    }
}
