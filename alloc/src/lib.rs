//! The global allocator of Weir's binaries: mimalloc, with `mi_malloc` for what needs no
//! more than mimalloc's natural alignment and the aligned API only for the rest.
//!
//! The `mimalloc` crate's `MiMalloc` calls `mi_malloc_aligned` for every allocation. Its
//! fast path serves only blocks up to 1 KiB whose next free block happens to be aligned;
//! everything larger (a session's buffers, the boxed request future) goes through the
//! aligned allocator's generic path, which works out whether the size's bin is naturally
//! aligned before calling the ordinary allocation. That is about 88 instructions per
//! allocation on Weir's request path against about 50 for `mi_malloc` (callgrind,
//! docs/performance.md, "Allocator calls, per-thread runtimes, fewer lookups"). Rust's own
//! `System` allocator makes the same choice between `malloc` and `posix_memalign`.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment every `mi_malloc` block of at least this size has (`MI_MAX_ALIGN_SIZE`,
/// 16 on 64-bit targets). A smaller block is aligned to its size rounded to a power of two
/// at least, hence the second condition in [`natural`].
const MIN_ALIGN: usize = 16;

/// Whether `mi_malloc(size)` already returns memory aligned for `align`.
#[inline]
fn natural(align: usize, size: usize) -> bool {
    align <= MIN_ALIGN && align <= size
}

/// mimalloc as Weir's global allocator (`#[global_allocator]` in the binaries).
pub struct Mimalloc;

// SAFETY: every block comes from mimalloc and goes back to it. `mi_malloc`, `mi_zalloc` and
// `mi_realloc` are used only when their blocks are aligned enough for the layout (`natural`,
// mimalloc's documented guarantee), the `_aligned` variants otherwise, exactly as the
// `mimalloc` crate calls them; `mi_free` frees blocks of either kind.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = if natural(layout.align(), layout.size()) {
            unsafe { mi::mi_malloc(layout.size()) }
        } else {
            unsafe { mi::mi_malloc_aligned(layout.size(), layout.align()) }
        };
        ptr.cast()
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = if natural(layout.align(), layout.size()) {
            unsafe { mi::mi_zalloc(layout.size()) }
        } else {
            unsafe { mi::mi_zalloc_aligned(layout.size(), layout.align()) }
        };
        ptr.cast()
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let ptr = ptr.cast::<c_void>();
        let new = if natural(layout.align(), new_size) {
            unsafe { mi::mi_realloc(ptr, new_size) }
        } else {
            unsafe { mi::mi_realloc_aligned(ptr, new_size, layout.align()) }
        };
        new.cast()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALIGNS: [usize; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 4096];
    const SIZES: [usize; 14] = [
        1,
        3,
        8,
        15,
        16,
        24,
        48,
        100,
        1024,
        1025,
        4096,
        13_000,
        65_536,
        1 << 21,
    ];

    fn layouts() -> impl Iterator<Item = Layout> {
        ALIGNS.iter().flat_map(|&a| {
            SIZES
                .iter()
                .filter_map(move |&s| Layout::from_size_align(s.next_multiple_of(a), a).ok())
        })
    }

    #[test]
    fn blocks_are_aligned_writable_and_freed() {
        for layout in layouts() {
            // Several at once, so that consecutive blocks of one bin are checked too.
            let ptrs: Vec<*mut u8> = (0..8)
                .map(|i| {
                    let p = unsafe { Mimalloc.alloc(layout) };
                    assert!(!p.is_null(), "{layout:?}");
                    assert_eq!(p as usize % layout.align(), 0, "{layout:?}");
                    unsafe { p.write_bytes(i as u8, layout.size()) };
                    p
                })
                .collect();
            for (i, p) in ptrs.into_iter().enumerate() {
                let last = unsafe { *p.add(layout.size() - 1) };
                assert_eq!(last, i as u8, "{layout:?}");
                unsafe { Mimalloc.dealloc(p, layout) };
            }
        }
    }

    #[test]
    fn zeroed_blocks_are_zero() {
        for layout in layouts() {
            // A freed, dirtied block first, so that a reused one would show.
            let p = unsafe { Mimalloc.alloc(layout) };
            unsafe { p.write_bytes(0xa5, layout.size()) };
            unsafe { Mimalloc.dealloc(p, layout) };
            let z = unsafe { Mimalloc.alloc_zeroed(layout) };
            assert_eq!(z as usize % layout.align(), 0, "{layout:?}");
            let bytes = unsafe { std::slice::from_raw_parts(z, layout.size()) };
            assert!(bytes.iter().all(|&b| b == 0), "{layout:?}");
            unsafe { Mimalloc.dealloc(z, layout) };
        }
    }

    #[test]
    fn realloc_keeps_contents_and_alignment() {
        for layout in layouts() {
            for new_size in [layout.align(), layout.size() / 2, layout.size() * 3] {
                let new_size = new_size.max(1).next_multiple_of(layout.align());
                let p = unsafe { Mimalloc.alloc(layout) };
                for i in 0..layout.size() {
                    unsafe { *p.add(i) = (i % 251) as u8 };
                }
                let q = unsafe { Mimalloc.realloc(p, layout, new_size) };
                assert!(!q.is_null());
                assert_eq!(q as usize % layout.align(), 0, "{layout:?} -> {new_size}");
                for i in 0..layout.size().min(new_size) {
                    assert_eq!(
                        unsafe { *q.add(i) },
                        (i % 251) as u8,
                        "{layout:?} -> {new_size}"
                    );
                }
                let after = Layout::from_size_align(new_size, layout.align()).unwrap();
                unsafe { Mimalloc.dealloc(q, after) };
            }
        }
    }
}
