//! Work spread over a few scoped threads, for requests whose cost is mostly waiting (libvirt
//! calls, cold image reads): the waits overlap.

/// `f` of every item, in order, computed on up to `threads` threads, each given at least
/// `per_thread_min` items (fewer are not worth a thread).
pub fn on_threads<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    per_thread_min: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let threads = (items.len() / per_thread_min.max(1)).clamp(1, threads.max(1));
    if threads == 1 {
        return items.iter().map(f).collect();
    }
    let per_thread = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|scope| {
        let workers: Vec<_> = items
            .chunks(per_thread)
            .map(|chunk| scope.spawn(move || chunk.iter().map(f).collect::<Vec<R>>()))
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::on_threads;

    #[test]
    fn results_keep_the_order_of_the_items_on_any_number_of_threads() {
        let items: Vec<u32> = (0..37).collect();
        for threads in [1, 2, 3, 8, 64] {
            let doubled = on_threads(&items, threads, 4, |i| i * 2);
            assert_eq!(doubled, items.iter().map(|i| i * 2).collect::<Vec<_>>());
        }
        assert!(on_threads(&[] as &[u32], 8, 4, |i| *i).is_empty());
    }
}
