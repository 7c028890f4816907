//! The database file the writer opened, watched so that appends do not go on
//! into a file that was deleted or replaced.

use std::path::{Path, PathBuf};

use crate::error::StoreError;

/// The database file the writer opened, to notice it being deleted or replaced
/// underneath the store: appends would then go to a file no one can open again.
pub(super) struct DatabaseFile {
    path: PathBuf,
    #[cfg(unix)]
    id: (u64, u64),
    /// Once the file was found gone, it stays gone for this store.
    gone: bool,
}

impl DatabaseFile {
    pub(super) fn of(path: &Path) -> std::io::Result<DatabaseFile> {
        // Absolute: the process may change its working directory later.
        let path = std::fs::canonicalize(path)?;
        let metadata = std::fs::metadata(&path)?;
        #[cfg(not(unix))]
        let _ = metadata;
        Ok(DatabaseFile {
            path,
            #[cfg(unix)]
            id: Self::id(&metadata),
            gone: false,
        })
    }

    #[cfg(unix)]
    fn id(metadata: &std::fs::Metadata) -> (u64, u64) {
        use std::os::unix::fs::MetadataExt;
        (metadata.dev(), metadata.ino())
    }

    /// Whether the path still names the file the store opened (one `stat`).
    pub(super) fn still_there(&mut self) -> bool {
        if self.gone {
            return false;
        }
        let metadata = std::fs::metadata(&self.path);
        #[cfg(unix)]
        let same = metadata.is_ok_and(|m| Self::id(&m) == self.id);
        #[cfg(not(unix))]
        let same = metadata.is_ok();
        self.gone = !same;
        same
    }

    pub(super) fn error(&self) -> StoreError {
        StoreError::FileChanged {
            path: self.path.clone(),
        }
    }
}
