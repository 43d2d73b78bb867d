//! Where the writer writes: standard output or a file opened for appending.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write as _},
    os::{
        fd::{AsFd as _, AsRawFd as _},
        unix::fs::{FileExt as _, MetadataExt as _},
    },
    path::{Path, PathBuf},
};

/// What the writer thread writes to.
pub(crate) trait Destination: Send + 'static {
    /// One `write(2)`: may write part of `bytes`.
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize>;

    /// Takes back the last `len` bytes written, where that can be done (a regular file).
    fn unwrite(&mut self, len: u64) -> io::Result<()>;

    /// Opens the path again (after log rotation); nothing to do for stdout.
    fn reopen(&mut self) -> io::Result<()>;

    /// Whether what is already there ends in the middle of a line.
    fn ends_mid_line(&mut self) -> bool;

    /// Whether the file written to has been removed (unlinked).
    fn removed(&mut self) -> bool {
        false
    }

    /// Waits (a bounded time) until a non-blocking destination takes bytes again.
    fn wait_writable(&mut self) {}

    /// For the log: the path, or `stdout`.
    fn describe(&self) -> String;
}

/// Standard output or a file, written unbuffered (the pipeline hands over whole blocks).
#[derive(Debug)]
pub(crate) struct FileDest {
    file: File,
    /// `None`: standard output.
    path: Option<PathBuf>,
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl FileDest {
    /// A duplicate of the process's standard output (the same open file or pipe).
    pub(crate) fn stdout() -> io::Result<Self> {
        Ok(Self {
            file: File::from(io::stdout().as_fd().try_clone_to_owned()?),
            path: None,
        })
    }

    /// `path`, opened for appending (created if missing).
    pub(crate) fn open(path: &Path) -> io::Result<Self> {
        Ok(Self {
            file: open_append(path)?,
            path: Some(path.to_path_buf()),
        })
    }
}

impl Destination for FileDest {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.file.write(bytes)
    }

    fn unwrite(&mut self, len: u64) -> io::Result<()> {
        let metadata = self.file.metadata()?;
        if !metadata.file_type().is_file() {
            return Err(io::ErrorKind::Unsupported.into());
        }
        let keep = metadata
            .len()
            .checked_sub(len)
            .ok_or(io::ErrorKind::InvalidInput)?;
        self.file.set_len(keep)
    }

    fn reopen(&mut self) -> io::Result<()> {
        if let Some(path) = &self.path {
            self.file = open_append(path)?;
        }
        Ok(())
    }

    fn ends_mid_line(&mut self) -> bool {
        // The file is open for writing only: read its last byte through another descriptor.
        let Ok(reader) = File::open(format!("/proc/self/fd/{}", self.file.as_raw_fd())) else {
            return false;
        };
        let Ok(metadata) = reader.metadata() else {
            return false;
        };
        let mut last = [0];
        metadata.file_type().is_file()
            && metadata.len() > 0
            && reader.read_exact_at(&mut last, metadata.len() - 1).is_ok()
            && last[0] != b'\n'
    }

    fn removed(&mut self) -> bool {
        self.path.is_some()
            && self
                .file
                .metadata()
                .is_ok_and(|metadata| metadata.nlink() == 0)
    }

    fn wait_writable(&mut self) {
        let mut poll = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for a descriptor this struct owns.
        unsafe { libc::poll(&raw mut poll, 1, 1000) };
    }

    fn describe(&self) -> String {
        self.path
            .as_ref()
            .map_or_else(|| "stdout".to_owned(), |path| path.display().to_string())
    }
}
