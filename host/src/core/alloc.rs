//! The process's allocator: glibc's malloc, with the over-aligned blocks of tokio's tasks
//! and socket registrations kept for reuse by the thread that freed them.
//!
//! tokio aligns each task's cell and each socket's `ScheduledIo` to 128 bytes (a cache
//! line pair, so neighbours do not share one). glibc has no cheap path for that: its
//! `posix_memalign` asks for `size + 128 + 32` bytes, finds the aligned spot inside, and
//! frees the pieces before and after it, about 800 instructions where a `malloc` of the
//! same size is about 100, and the cut-off pieces are small holes in the heap. Every new
//! connection makes three such blocks (its task and its two sockets' registrations) and
//! every HTTP/2 stream one (hyper's task per stream): measured under callgrind, the three
//! were 2,467 of the 26,846 user-space instructions of a tcp listener's connection
//! (`host/benches/l4_instructions.sh`, BENCHMARKS.md).
//!
//! So a freed block whose alignment is above 16 and at most 128 bytes and whose size is at
//! most [`LARGEST`] goes on a free list of its thread, one list per size (the size of a
//! 128-aligned type is a multiple of 128), and the next allocation of that size on that
//! thread takes it back: a pointer pop, no lock. Each list holds at most [`KEPT_BYTES`]
//! worth of blocks (at least [`KEPT_MIN`]); beyond that, and on a thread whose lists are
//! already gone, blocks go back to glibc. A block freed on another thread than the one
//! that made it joins the freeing thread's list: the memory is the process's either way.
//! What a thread's lists hold is not returned while the thread idles (at most a few
//! hundred KiB per thread with the sizes weir makes); it is when the thread ends.
//!
//! Every other allocation goes straight to glibc (`std::alloc::System`), so
//! `malloc_trim` ([`super::memory`]) and the heap's layout are as before. mimalloc was
//! measured as a whole replacement and not kept for its memory (BENCHMARKS.md, issue 16).
//!
//! Unsafe code: this is a `GlobalAlloc`. A cached block's first word holds the next
//! block of its list; a block is on at most one list, and only while it is free.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ptr;

/// Alignment in bytes of the blocks kept: tokio's cache-padded types. Blocks aligned to
/// 32 or 64 bytes are kept too (rounded up to this alignment).
pub const ALIGN: usize = 128;

/// The largest block kept, in bytes.
pub const LARGEST: usize = 16 << 10;

/// Bytes of free blocks one list of one thread keeps at most...
pub const KEPT_BYTES: usize = 64 << 10;

/// ...but at least this many blocks.
pub const KEPT_MIN: u32 = 8;

const CLASSES: usize = LARGEST / ALIGN;

/// A thread's free lists: the first block of each size and how many there are.
struct Lists {
    heads: [Cell<*mut u8>; CLASSES],
    counts: [Cell<u32>; CLASSES],
}

impl Drop for Lists {
    /// A thread that ends gives its kept blocks back to glibc (threads of tokio's blocking
    /// pool come and go).
    fn drop(&mut self) {
        self.release();
    }
}

impl Lists {
    /// Gives every kept block back to glibc.
    fn release(&self) {
        for (class, head) in self.heads.iter().enumerate() {
            let mut block = head.replace(ptr::null_mut());
            while !block.is_null() {
                // SAFETY: a block on a list is free and ours; its first word is the next.
                let next = unsafe { block.cast::<*mut u8>().read() };
                // SAFETY: blocks of a kept class were allocated by System with this layout.
                unsafe { System.dealloc(block, class_layout(class)) };
                block = next;
            }
            self.counts[class].set(0);
        }
    }
}

thread_local! {
    // `const`: no lazy initialisation, which could allocate. Its destructor runs when the
    // thread ends; an allocation or free after that (another thread-local's destructor)
    // finds `try_with` failing and goes to glibc directly.
    static LISTS: Lists = const {
        Lists {
            heads: [const { Cell::new(ptr::null_mut()) }; CLASSES],
            counts: [const { Cell::new(0) }; CLASSES],
        }
    };
}

/// The list a layout's blocks go to, if they are kept.
fn class(layout: Layout) -> Option<usize> {
    let (size, align) = (layout.size(), layout.align());
    if align <= 16 || align > ALIGN || size == 0 || size > LARGEST {
        return None;
    }
    Some(size.div_ceil(ALIGN) - 1)
}

/// The layout glibc is asked for when a kept size class is allocated: its whole class,
/// at [`ALIGN`], so any block of the class serves any layout that maps to it.
fn class_layout(class: usize) -> Layout {
    // SAFETY: ALIGN is a power of two and the size a multiple of it, far below isize::MAX.
    unsafe { Layout::from_size_align_unchecked((class + 1) * ALIGN, ALIGN) }
}

fn kept_most(class: usize) -> u32 {
    ((KEPT_BYTES / ((class + 1) * ALIGN)) as u32).max(KEPT_MIN)
}

/// glibc's malloc, with over-aligned blocks reused per thread (see the module's doc).
#[derive(Debug, Default, Clone, Copy)]
pub struct Allocator;

// SAFETY: every block handed out is either System's for the same layout, or a block of a
// kept class (allocated by System with `class_layout`, which is at least as large and as
// aligned as any layout of that class), and every block comes back to the path that
// matches its layout's class.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class(layout) else {
            // SAFETY: the caller's layout, passed on.
            return unsafe { System.alloc(layout) };
        };
        let taken = LISTS
            .try_with(|lists| {
                let head = lists.heads[class].get();
                if head.is_null() {
                    return head;
                }
                // SAFETY: a block on a list is free, at least a word long and aligned;
                // its first word is the next block.
                lists.heads[class].set(unsafe { head.cast::<*mut u8>().read() });
                lists.counts[class].set(lists.counts[class].get() - 1);
                head
            })
            .unwrap_or(ptr::null_mut());
        if !taken.is_null() {
            return taken;
        }
        // SAFETY: a valid layout of non-zero size.
        unsafe { System.alloc(class_layout(class)) }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let Some(class) = class(layout) else {
            // SAFETY: the caller's block and layout, passed on.
            return unsafe { System.dealloc(block, layout) };
        };
        let kept = LISTS
            .try_with(|lists| {
                let count = lists.counts[class].get();
                if count >= kept_most(class) {
                    return false;
                }
                // SAFETY: the block is free now, ours, and at least ALIGN bytes.
                unsafe { block.cast::<*mut u8>().write(lists.heads[class].get()) };
                lists.heads[class].set(block);
                lists.counts[class].set(count + 1);
                true
            })
            .unwrap_or(false);
        if !kept {
            // SAFETY: blocks of a kept class were allocated by System with this layout.
            unsafe { System.dealloc(block, class_layout(class)) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match class(layout) {
            // SAFETY: the caller's layout, passed on.
            None => unsafe { System.alloc_zeroed(layout) },
            Some(_) => {
                // SAFETY: as `alloc`; the block is at least `layout.size()` bytes.
                let block = unsafe { self.alloc(layout) };
                if !block.is_null() {
                    // SAFETY: as above.
                    unsafe { ptr::write_bytes(block, 0, layout.size()) };
                }
                block
            }
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees the new layout is valid.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class(layout), class(new)) {
            // SAFETY: the caller's block and layouts, passed on.
            (None, None) => unsafe { System.realloc(block, layout, new_size) },
            _ => {
                // SAFETY: as `alloc` and `dealloc`; the copy is of the bytes both hold.
                unsafe {
                    let moved = self.alloc(new);
                    if !moved.is_null() {
                        ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                        self.dealloc(block, layout);
                    }
                    moved
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(align(128))]
    struct Padded {
        _bytes: [u8; 300],
    }

    #[test]
    fn classes_cover_over_aligned_sizes_only() {
        assert_eq!(class(Layout::new::<u64>()), None);
        assert_eq!(class(Layout::from_size_align(256, 16).unwrap()), None);
        assert_eq!(class(Layout::from_size_align(256, 128).unwrap()), Some(1));
        assert_eq!(class(Layout::new::<Padded>()), Some(2));
        assert_eq!(class(Layout::from_size_align(100, 64).unwrap()), Some(0));
        assert_eq!(class(Layout::from_size_align(LARGEST, 128).unwrap()), Some(CLASSES - 1));
        assert_eq!(class(Layout::from_size_align(LARGEST + 128, 128).unwrap()), None);
        assert_eq!(class(Layout::from_size_align(256, 256).unwrap()), None);
    }

    #[test]
    fn a_freed_block_is_reused_aligned_and_the_list_is_bounded() {
        let a = Allocator;
        let layout = Layout::from_size_align(384, 128).unwrap();
        let most = kept_most(class(layout).unwrap()) as usize;
        unsafe {
            let blocks: Vec<*mut u8> = (0..most + 4).map(|_| a.alloc(layout)).collect();
            for &b in &blocks {
                assert!(!b.is_null());
                assert_eq!(b as usize % 128, 0);
                ptr::write_bytes(b, 0xab, layout.size());
            }
            for &b in &blocks {
                a.dealloc(b, layout);
            }
            let c = class(layout).unwrap();
            assert_eq!(LISTS.with(|l| l.counts[c].get()) as usize, most);
            // The last block freed and kept comes back first.
            let again = a.alloc(layout);
            assert_eq!(again, blocks[most - 1]);
            let zeroed = a.alloc_zeroed(layout);
            assert!(std::slice::from_raw_parts(zeroed, layout.size()).iter().all(|&x| x == 0));
            let grown = a.realloc(zeroed, layout, 1024);
            assert_eq!(grown as usize % 128, 0);
            assert!(std::slice::from_raw_parts(grown, layout.size()).iter().all(|&x| x == 0));
            a.dealloc(grown, Layout::from_size_align(1024, 128).unwrap());
            a.dealloc(again, layout);
        }
    }

    #[test]
    fn releasing_a_threads_lists_gives_every_block_back() {
        let lists =
            Lists { heads: [const { Cell::new(ptr::null_mut()) }; CLASSES], counts: [const { Cell::new(0) }; CLASSES] };
        for class in [0, 8, CLASSES - 1] {
            for _ in 0..3 {
                let block = unsafe { System.alloc(class_layout(class)) };
                unsafe { block.cast::<*mut u8>().write(lists.heads[class].get()) };
                lists.heads[class].set(block);
                lists.counts[class].set(lists.counts[class].get() + 1);
            }
        }
        lists.release();
        assert!(lists.heads.iter().all(|h| h.get().is_null()));
        assert!(lists.counts.iter().all(|c| c.get() == 0));
        // What a thread's end runs: nothing is left to free twice.
        drop(lists);
    }

    #[test]
    fn blocks_freed_on_another_thread_serve_that_thread() {
        let layout = Layout::from_size_align(2304, 128).unwrap();
        let block = unsafe { Allocator.alloc(layout) } as usize;
        std::thread::spawn(move || unsafe {
            Allocator.dealloc(block as *mut u8, layout);
            assert_eq!(Allocator.alloc(layout) as usize, block);
            Allocator.dealloc(block as *mut u8, layout);
        })
        .join()
        .unwrap();
    }
}
