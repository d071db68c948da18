//! The datapath bench's render alone, five times, for profiling it (`perf record
//! target/release/examples/render_time`): the render is allocation-bound, and this runs it
//! without the kernel steps around it.

use std::time::Instant;
fn main() {
    let span = weft_bench::datapath::heavy_span(500, 5000);
    for _ in 0..5 {
        let t = Instant::now();
        let r = weft_agent::nft::render(&span);
        let a = t.elapsed();
        let t = Instant::now();
        drop(r);
        eprintln!("render {:?} drop {:?}", a, t.elapsed());
    }
}
