//! virtio-blk's backend: a raw image file or a block device, opened, locked and sized
//! before the guest runs.
//!
//! The image is locked with flock(2): exclusive when read-write, shared with `ro`, so a
//! second bhyve cannot write a disk another one uses (two read-only users may share
//! it). Discard and write-zeroes punch holes where the backend can (Linux
//! fallocate(PUNCH_HOLE), FreeBSD fspacectl(SPACECTL_DEALLOC), regular files only);
//! write-zeroes falls back to writing zeros.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use thiserror::Error;

/// virtio-blk's sector: capacity and request offsets are in 512-byte units.
pub const SECTOR_SIZE: u64 = 512;

/// Why a disk cannot be used. Each names the path and the cause in one line.
#[derive(Debug, Error)]
pub enum DiskError {
    #[error("{0}: no such file")]
    Missing(PathBuf),
    #[error("{0}: is a directory, not a disk image")]
    Directory(PathBuf),
    #[error("{0}: not a regular file or a disk device")]
    NotADisk(PathBuf),
    #[error("{0}: permission denied")]
    Permission(PathBuf),
    #[error("{0}: the image is read-only; add ',ro' to use it read-only")]
    ReadOnly(PathBuf),
    #[error("{0}: in use by another bhyve (the image is locked)")]
    Locked(PathBuf),
    #[error("{path}: size {size} is not a multiple of {SECTOR_SIZE} bytes")]
    BadSize { path: PathBuf, size: u64 },
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: io::Error },
}

/// An open, locked disk.
#[derive(Debug)]
pub struct Disk {
    file: Flock<File>,
    path: PathBuf,
    size: u64,
    read_only: bool,
    regular: bool,
}

impl Disk {
    /// The image's descriptor and what the device does with it.
    pub fn host_fd(&self) -> crate::transport::HostFd {
        crate::transport::HostFd::Disk {
            fd: self.file.as_raw_fd(),
            writable: !self.read_only,
        }
    }

    /// Opens `path` (read-only with `read_only`), locks it and reads its size.
    pub fn open(path: &Path, read_only: bool) -> Result<Disk, DiskError> {
        let p = || path.to_path_buf();
        let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => DiskError::Missing(p()),
            io::ErrorKind::PermissionDenied => DiskError::Permission(p()),
            _ => DiskError::Io { path: p(), err: e },
        })?;
        let ft = meta.file_type();
        if ft.is_dir() {
            return Err(DiskError::Directory(p()));
        }
        let regular = ft.is_file();
        // Block devices on Linux, disk character devices on FreeBSD.
        if !regular && !ft.is_block_device() && !ft.is_char_device() {
            return Err(DiskError::NotADisk(p()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) if !read_only => {
                    // Readable but not writable: say how to use it.
                    if File::open(path).is_ok() {
                        DiskError::ReadOnly(p())
                    } else {
                        DiskError::Permission(p())
                    }
                }
                Some(libc::EACCES) | Some(libc::EPERM) => DiskError::Permission(p()),
                _ => DiskError::Io { path: p(), err: e },
            })?;
        let arg = if read_only {
            FlockArg::LockSharedNonblock
        } else {
            FlockArg::LockExclusiveNonblock
        };
        let file = Flock::lock(file, arg).map_err(|(_, e)| {
            if e == nix::errno::Errno::EWOULDBLOCK {
                DiskError::Locked(p())
            } else {
                DiskError::Io {
                    path: p(),
                    err: e.into(),
                }
            }
        })?;
        let size = if regular {
            meta.len()
        } else {
            device_size(&file).map_err(|err| DiskError::Io { path: p(), err })?
        };
        if !size.is_multiple_of(SECTOR_SIZE) {
            return Err(DiskError::BadSize { path: p(), size });
        }
        Ok(Disk {
            file,
            path: p(),
            size,
            read_only,
            regular,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Whether discard can punch holes here.
    pub fn can_punch(&self) -> bool {
        self.regular && !self.read_only && cfg!(any(target_os = "linux", target_os = "freebsd"))
    }

    /// Reads exactly `len` bytes at `offset` into `buf`.
    ///
    /// # Safety
    /// `buf..buf+len` must be writable memory that stays mapped for the call.
    pub unsafe fn read_at(&self, buf: *mut u8, len: usize, offset: u64) -> io::Result<()> {
        self.transfer(len, offset, io::ErrorKind::UnexpectedEof, |done, off| {
            // SAFETY: buf+done..buf+len is inside the caller's writable range.
            unsafe { libc::pread(self.file.as_raw_fd(), buf.add(done).cast(), len - done, off) }
        })
    }

    /// Writes exactly `len` bytes from `buf` at `offset`.
    ///
    /// # Safety
    /// `buf..buf+len` must be readable memory that stays mapped for the call.
    pub unsafe fn write_at(&self, buf: *const u8, len: usize, offset: u64) -> io::Result<()> {
        self.transfer(len, offset, io::ErrorKind::WriteZero, |done, off| {
            // SAFETY: buf+done..buf+len is inside the caller's readable range.
            unsafe { libc::pwrite(self.file.as_raw_fd(), buf.add(done).cast(), len - done, off) }
        })
    }

    /// Calls `step(done, file offset)` (a pread or pwrite of the rest) until `len` bytes
    /// are through; a return of 0 is `short`, EINTR is retried.
    fn transfer(
        &self,
        len: usize,
        offset: u64,
        short: io::ErrorKind,
        mut step: impl FnMut(usize, libc::off_t) -> isize,
    ) -> io::Result<()> {
        let mut done = 0usize;
        while done < len {
            let n = step(done, offset_at(offset, done)?);
            match n {
                n if n > 0 => done += n as usize,
                0 => return Err(io::Error::from(short)),
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }

    /// Makes every completed write durable (fdatasync; fsync on FreeBSD devices).
    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Deallocates `[offset, offset + len)`: reads give zeros afterwards.
    pub fn punch(&self, offset: u64, len: u64) -> io::Result<()> {
        if !self.can_punch() {
            return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
        }
        punch_hole(&self.file, offset, len)
    }

    /// Zeroes `[offset, offset + len)`, by punching a hole where possible.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.punch(offset, len).is_ok() {
            return Ok(());
        }
        let zeros = vec![0u8; 64 * 1024];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(zeros.len() as u64) as usize;
            // SAFETY: `zeros` is a live buffer of at least n bytes.
            unsafe { self.write_at(zeros.as_ptr(), n, offset + done)? };
            done += n as u64;
        }
        Ok(())
    }
}

fn offset_at(offset: u64, done: usize) -> io::Result<libc::off_t> {
    offset
        .checked_add(done as u64)
        .and_then(|o| libc::off_t::try_from(o).ok())
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
}

#[cfg(target_os = "linux")]
fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    // SAFETY: fallocate on an fd we own, with plain integer arguments.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            len,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(target_os = "freebsd")]
fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    let mut range = libc::spacectl_range {
        r_offset: off,
        r_len: len,
    };
    // fspacectl may do part of the range per call and says what is left in `range`.
    while range.r_len > 0 {
        let req = range;
        // SAFETY: `req` and `range` are live spacectl_range values; the fd is ours.
        let r = unsafe {
            libc::fspacectl(
                file.as_raw_fd(),
                libc::SPACECTL_DEALLOC,
                &req,
                0,
                &mut range,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(not(any(target_os = "linux", target_os = "freebsd")))]
fn punch_hole(_: &File, _: u64, _: u64) -> io::Result<()> {
    Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
}

#[cfg(target_os = "linux")]
fn device_size(file: &File) -> io::Result<u64> {
    // BLKGETSIZE64: _IOR(0x12, 114, size_t).
    nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
    let mut size = 0u64;
    // SAFETY: BLKGETSIZE64 writes one u64 into `size`.
    unsafe { blkgetsize64(file.as_raw_fd(), &mut size) }.map_err(io::Error::from)?;
    Ok(size)
}

#[cfg(target_os = "freebsd")]
fn device_size(file: &File) -> io::Result<u64> {
    // DIOCGMEDIASIZE: _IOR('d', 129, off_t) (sys/disk.h).
    nix::ioctl_read!(diocgmediasize, b'd', 129, libc::off_t);
    let mut size: libc::off_t = 0;
    // SAFETY: DIOCGMEDIASIZE writes one off_t into `size`.
    unsafe { diocgmediasize(file.as_raw_fd(), &mut size) }.map_err(io::Error::from)?;
    u64::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

#[cfg(not(any(target_os = "linux", target_os = "freebsd")))]
fn device_size(file: &File) -> io::Result<u64> {
    use std::io::Seek;
    let mut f = file;
    f.seek(io::SeekFrom::End(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    fn image(dir: &Path, name: &str, size: usize) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, vec![0xa5u8; size]).unwrap();
        p
    }

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vmm-virtio-disk-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn refuses_what_is_not_a_usable_disk() {
        let d = tmpdir("refuse");
        let msg = |r: Result<Disk, DiskError>| r.unwrap_err().to_string();
        assert!(msg(Disk::open(&d.join("none"), false)).ends_with("no such file"));
        assert!(msg(Disk::open(&d, false)).ends_with("is a directory, not a disk image"));
        let odd = image(&d, "odd.img", 1000);
        assert!(msg(Disk::open(&odd, false)).ends_with("size 1000 is not a multiple of 512 bytes"));
        let ok = image(&d, "ok.img", 4096);
        let first = Disk::open(&ok, false).unwrap();
        assert_eq!(first.size(), 4096);
        assert!(msg(Disk::open(&ok, false)).contains("in use by another bhyve"));
        assert!(msg(Disk::open(&ok, true)).contains("in use by another bhyve"));
        drop(first);
        // Two read-only users share it; a writer is then refused.
        let r1 = Disk::open(&ok, true).unwrap();
        let _r2 = Disk::open(&ok, true).unwrap();
        assert!(msg(Disk::open(&ok, false)).contains("in use by another bhyve"));
        assert!(r1.read_only() && !r1.can_punch());
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A block device (a loop device over an image, when we may make one): sized by
    /// BLKGETSIZE64, read and written like a file, no hole punching offered.
    #[test]
    fn block_devices_are_disks() {
        let d = tmpdir("blockdev");
        let img = image(&d, "loop.img", 1 << 20);
        let out = std::process::Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&img)
            .output();
        let dev = match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
            _ => {
                eprintln!("block device test skipped: cannot make a loop device (needs root)");
                return;
            }
        };
        let r = std::panic::catch_unwind(|| {
            let disk = Disk::open(Path::new(&dev), false).unwrap();
            assert_eq!(disk.size(), 1 << 20);
            assert!(!disk.can_punch());
            let data = [3u8; 512];
            // SAFETY: `data` and `back` are live 512-byte buffers.
            unsafe { disk.write_at(data.as_ptr(), 512, 512).unwrap() };
            disk.flush().unwrap();
            let mut back = [0u8; 512];
            // SAFETY: as above.
            unsafe { disk.read_at(back.as_mut_ptr(), 512, 512).unwrap() };
            assert_eq!(back, data);
        });
        let _ = std::process::Command::new("losetup")
            .args(["-d", &dev])
            .status();
        let _ = std::fs::remove_dir_all(&d);
        if let Err(p) = r {
            std::panic::resume_unwind(p);
        }
    }

    #[test]
    fn read_write_flush_punch_zero() {
        let d = tmpdir("io");
        let p = image(&d, "io.img", 1 << 20);
        let disk = Disk::open(&p, false).unwrap();
        let data = [7u8; 1024];
        // SAFETY: `data` is a live 1024-byte buffer.
        unsafe { disk.write_at(data.as_ptr(), 1024, 4096).unwrap() };
        disk.flush().unwrap();
        let mut back = [0u8; 1024];
        // SAFETY: `back` is a live 1024-byte buffer.
        unsafe { disk.read_at(back.as_mut_ptr(), 1024, 4096).unwrap() };
        assert_eq!(back, data);
        // Reading past the end is an error, not a short read.
        // SAFETY: as above.
        assert!(unsafe { disk.read_at(back.as_mut_ptr(), 1024, (1 << 20) - 512) }.is_err());
        disk.punch(0, 8192).unwrap();
        disk.write_zeroes(65536, 4096).unwrap();
        let mut f = File::open(&p).unwrap();
        let mut all = Vec::new();
        f.read_to_end(&mut all).unwrap();
        assert!(all[..8192].iter().all(|&b| b == 0));
        assert!(all[8192..65536].iter().all(|&b| b == 0xa5));
        assert!(all[65536..69632].iter().all(|&b| b == 0));
        assert_eq!(all.len(), 1 << 20, "punching keeps the size");
        let mut f = OpenOptions::new().write(true).open(&p).unwrap();
        f.seek(io::SeekFrom::Start(0)).unwrap();
        f.write_all(b"x").unwrap();
        let _ = std::fs::remove_dir_all(&d);
    }
}
