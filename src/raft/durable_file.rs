//! Replacing a small file so that a crash leaves either the old or the new contents,
//! durably: write a temp file, fsync it, rename it over the target, fsync the directory.
use std::io::{self, Write};
use std::path::Path;

/// Blocks for a write and two fsyncs.
pub fn replace_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp_name = path.file_name().ok_or_else(|| io::Error::other("path has no file name"))?.to_owned();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()
}
