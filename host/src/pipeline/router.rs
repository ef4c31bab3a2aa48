//! Where a stage's outputs go: the default next hop (the next stage, or the
//! sinks without a route) and the named routes (sinks with `route`).

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::flow::batch::Batch;

/// The destinations of one step's outputs.
#[derive(Clone)]
pub struct Downstream {
    default: Vec<mpsc::Sender<Batch>>,
    routes: Arc<HashMap<Arc<str>, Vec<mpsc::Sender<Batch>>>>,
}

/// A step's outputs, split by destination.
#[derive(Debug, Default)]
pub struct Outputs {
    /// For the default next hop.
    pub default: Batch,
    /// For named routes, one batch per route.
    pub routed: Vec<Batch>,
}

impl Outputs {
    /// Adds an output bound for `route` (or the default hop).
    pub fn push(
        &mut self,
        message: crate::message::Message,
        token: crate::flow::ack::AckToken,
        route: Option<Arc<str>>,
    ) {
        match route {
            None => self.default.push(message, token),
            Some(route) => {
                let batch = match self.routed.iter().position(|b| b.route.as_ref() == Some(&route)) {
                    Some(i) => &mut self.routed[i],
                    None => {
                        self.routed.push(Batch { route: Some(route), ..Batch::default() });
                        self.routed.last_mut().expect("just pushed")
                    }
                };
                batch.push(message, token);
            }
        }
    }
}

impl Downstream {
    /// Destinations: `default` for unrouted outputs, `routes` by name.
    pub fn new(default: Vec<mpsc::Sender<Batch>>, routes: HashMap<Arc<str>, Vec<mpsc::Sender<Batch>>>) -> Self {
        Downstream { default, routes: Arc::new(routes) }
    }

    /// The interned name of `route`, if some sink has it.
    pub fn route(&self, route: &str) -> Option<Arc<str>> {
        self.routes.get_key_value(route).map(|(name, _)| name.clone())
    }

    /// Every (destination, batch) pair of `outputs`, fanning out copies where
    /// several sinks share a destination.
    fn plan(&self, outputs: Outputs) -> Vec<(&mpsc::Sender<Batch>, Batch)> {
        let mut plan = Vec::new();
        fan_out(&self.default, outputs.default, &mut plan);
        for batch in outputs.routed {
            let targets = batch.route.as_ref().and_then(|r| self.routes.get(r)).map(Vec::as_slice).unwrap_or(&[]);
            fan_out(targets, batch, &mut plan);
        }
        plan
    }

    /// Delivers from a worker thread, blocking while destinations are full.
    pub fn deliver_blocking(&self, outputs: Outputs) {
        for (target, batch) in self.plan(outputs) {
            // A closed destination means the run is being torn down after a
            // halt; what is dropped here stays unacknowledged.
            let _ = target.blocking_send(batch);
        }
    }

    /// Delivers from a task.
    pub async fn deliver(&self, outputs: Outputs) {
        for (target, batch) in self.plan(outputs) {
            let _ = target.send(batch).await;
        }
    }
}

/// Plans `batch` for every target: copies for all but the last, which takes
/// the batch itself.
fn fan_out<'a>(targets: &'a [mpsc::Sender<Batch>], batch: Batch, plan: &mut Vec<(&'a mpsc::Sender<Batch>, Batch)>) {
    if batch.is_empty() {
        return;
    }
    if let Some((last, rest)) = targets.split_last() {
        for target in rest {
            plan.push((target, batch.fan_out_copy()));
        }
        plan.push((last, batch));
    }
}
