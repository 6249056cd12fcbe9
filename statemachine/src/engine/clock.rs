//! Time as the engine sees it: real (optionally scaled) for builds, virtual for tests.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
    /// A delay the state machine asks for (Retry interval, Wait state).
    fn delay(&self, d: Duration) -> BoxFuture<'static, ()>;
    /// Fires when a timeout (TimeoutSeconds) of `d` has run out.
    fn timeout(&self, d: Duration) -> BoxFuture<'static, ()>;
}

/// Wall-clock time; `scale` < 1 shortens every delay and timeout (0.01: a 30 s retry
/// interval takes 0.3 s), for runs against an emulator that is ready at once.
#[derive(Debug, Clone, Copy)]
pub struct RealClock {
    pub scale: f64,
}

impl Default for RealClock {
    fn default() -> RealClock {
        RealClock { scale: 1.0 }
    }
}

impl Clock for RealClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
    fn delay(&self, d: Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(d.mul_f64(self.scale)))
    }
    fn timeout(&self, d: Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(d.mul_f64(self.scale)))
    }
}

/// Delays return at once and move virtual time forward; every delay is recorded so tests
/// can assert the exact schedule. Timeouts never fire (virtual time only moves by delays).
#[derive(Debug, Clone)]
pub struct VirtualClock {
    inner: Arc<Mutex<VirtualInner>>,
}

#[derive(Debug)]
struct VirtualInner {
    now: DateTime<Utc>,
    delays: Vec<Duration>,
}

impl VirtualClock {
    pub fn new(start: DateTime<Utc>) -> VirtualClock {
        VirtualClock {
            inner: Arc::new(Mutex::new(VirtualInner {
                now: start,
                delays: Vec::new(),
            })),
        }
    }
    /// Every delay asked for so far, in order.
    pub fn delays(&self) -> Vec<Duration> {
        self.inner.lock().unwrap().delays.clone()
    }
    /// Total virtual time slept.
    pub fn elapsed(&self) -> Duration {
        self.inner.lock().unwrap().delays.iter().sum()
    }
}

impl Default for VirtualClock {
    fn default() -> VirtualClock {
        VirtualClock::new(
            DateTime::parse_from_rfc3339("2024-01-01T00:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
        )
    }
}

impl Clock for VirtualClock {
    fn now(&self) -> DateTime<Utc> {
        self.inner.lock().unwrap().now
    }
    fn delay(&self, d: Duration) -> BoxFuture<'static, ()> {
        let mut inner = self.inner.lock().unwrap();
        inner.delays.push(d);
        inner.now += chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        Box::pin(futures::future::ready(()))
    }
    fn timeout(&self, _d: Duration) -> BoxFuture<'static, ()> {
        Box::pin(futures::future::pending())
    }
}
