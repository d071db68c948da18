//! What the REST API reads of a compiler kept current from the change log: the revision it is
//! at, the compiler itself (explain, reach, which nodes hold what) and realization. A trait
//! here, in the core both sides depend on, so that the API does not depend on the controller
//! that implements it (DESIGN.md §2: adapters meet through core traits), and an API-only
//! process can hold a compiler that encodes nothing for agents.
//!
//! Futures are boxed `std` futures: the compiler stays free of any async runtime.

use std::future::Future;
use std::pin::Pin;

use crate::Compiler;

/// A future that resolves once something has happened.
pub type Waiting<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

pub trait PolicyView: Send + Sync + std::fmt::Debug {
    /// The revision the compiler is at; `None` while none is in service (at start, and while
    /// one that failed is loaded again).
    fn revision(&self) -> Option<i64>;

    /// Resolves once the compiler is at `revision` or beyond.
    fn reached(&self, revision: i64) -> Waiting<'_>;

    /// Whether the change-log follower that keeps the compiler current is running.
    fn following(&self) -> bool;

    /// Runs `f` on the compiler and the revision it is at, briefly (the follower waits);
    /// false, without calling it, while none is in service.
    fn read(&self, f: &mut dyn FnMut(&Compiler, i64)) -> bool;

    /// Whether a node that has realized `realized` has everything meant for it up to
    /// `revision`: `Ok(())`, or `Err(needed)` with the revision it still needs.
    fn realized(&self, node: &str, realized: i64, revision: i64, has_ports: bool) -> Result<(), i64>;
}

impl dyn PolicyView {
    /// [`PolicyView::read`] with a result: `None` while no compiler is in service.
    pub fn with_compiler<T>(&self, f: impl FnOnce(&Compiler, i64) -> T) -> Option<T> {
        let mut f = Some(f);
        let mut out = None;
        self.read(&mut |compiler, revision| {
            if let Some(f) = f.take() {
                out = Some(f(compiler, revision));
            }
        });
        out
    }
}
