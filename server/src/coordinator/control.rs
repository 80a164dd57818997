//! SCAFFOLD on the server: the control every round announces by its id,
//! served to vehicles that fetch it (counted in the ledger like model
//! bytes), and its step at the close of a round from the updates the round
//! kept (see `convoy_shared::strategy::scaffold`).

use super::aggregate::Held;
use super::rounds::OpenRound;
use super::serve::add_down;
use super::{Coordinator, Output};
use convoy_shared::chunk;
use convoy_shared::messages::{Delta, ModelChunk, ModelPart, Objective};
use convoy_shared::strategy::fold::decode_kept;
use convoy_shared::strategy::scaffold::{Control, ControlSum, control_codec};
use convoy_shared::strategy::server::OptState;
use convoy_shared::version::MODEL_CHUNK_SIZE;

/// The server control in force, ready to serve.
#[derive(Debug, Clone)]
pub(super) struct ServerControl {
    pub(super) control: Control,
    /// What vehicles fetch, and its id.
    payload: Vec<u8>,
    pub(super) id: [u8; 32],
}

impl ServerControl {
    fn new(control: Control) -> Self {
        let payload = control.payload();
        let id = convoy_shared::strategy::scaffold::payload_id(&payload);
        Self {
            control,
            payload,
            id,
        }
    }
}

impl Coordinator {
    /// The control stored in `state` (that of the current model), or zeros
    /// when none is (said when the model is not the fleet's first);
    /// `None` unless the fleet runs SCAFFOLD.
    pub(super) fn control_of(&self, state: &OptState) -> Option<ServerControl> {
        if !self.config.strategy.scaffold {
            return None;
        }
        let codec = control_codec(self.downlink);
        let stored = state
            .control
            .clone()
            .and_then(|d| Control::from_published(d, &self.spec).ok());
        if stored.is_none() && self.current.parent.is_some() {
            tracing::warn!(
                "no SCAFFOLD control is stored for the current model; it starts at zero"
            );
        }
        Some(ServerControl::new(
            stored.unwrap_or_else(|| Control::zeros(&self.spec, codec)),
        ))
    }

    /// The objective the next round announces: the configured one, with
    /// the id of the control in force under SCAFFOLD.
    pub(super) fn objective(&self) -> Objective {
        match (&self.control, self.config.strategy.objective()) {
            (Some(c), Objective::Scaffold { .. }) => Objective::Scaffold { control: c.id },
            (_, objective) => objective,
        }
    }

    /// Answers a fetch of the control `id`; false when `id` is not the
    /// control in force (the caller then treats it as a model version).
    pub(super) fn serve_control(
        &mut self,
        client: &str,
        id: &[u8; 32],
        out: &mut Vec<Output>,
    ) -> bool {
        let Some(control) = self.control.as_ref().filter(|c| c.id == *id) else {
            return false;
        };
        let pieces: Vec<ModelChunk> = chunk::split(&control.payload, MODEL_CHUNK_SIZE)
            .map(|(pos, data)| ModelChunk {
                version: *id,
                part: ModelPart::Control { pos },
                data: data.to_vec(),
            })
            .collect();
        let (bytes, wire_bytes, chunks) = self.send_chunks(client, pieces, out);
        if let Some(r) = self.round.as_mut() {
            let row = match r.rows.get_mut(client) {
                Some(row) => row,
                None => &mut r.unselected_down,
            };
            add_down(row, bytes, wire_bytes, chunks);
        }
        true
    }

    /// SCAFFOLD's step at the close of round `r`: the control after it,
    /// published, from the updates the round's rule kept; `None` without
    /// SCAFFOLD, or when an update cannot be read back (said; the control
    /// then stays as it was).
    pub(super) fn control_step(&mut self, r: &OpenRound) -> Option<Delta> {
        let current = self.control.as_ref()?.control.clone();
        let round = r.announce.round;
        let lr = r.announce.task.lr;
        let mut sum = ControlSum::for_spec(&self.spec);
        let heads = self.spec.heads.len();
        for m in r.members.iter().filter(|m| m.kept) {
            if let Err(e) = self.decode_member(round, r, m, heads) {
                tracing::error!(round, client = %m.client, error = %e, "an update could not be read back; the SCAFFOLD control stays");
                return Some(current.published);
            }
            let steps = r.rows.get(&m.client).map_or(1, |row| row.steps);
            sum.fold(&self.scratch, m.head, steps, lr, m.scale);
        }
        // the share of the fleet that reported, as the round sampled it
        let selected = r.selected.len().max(1) as f64;
        let share = sum.updates() as f64 / selected * self.config.rounds.sample_fraction;
        let next = sum.step(&current.values, share);
        Some(Control::publish(&next, control_codec(self.downlink)).published)
    }

    /// Decodes member `m`'s update into the scratch buffer.
    fn decode_member(
        &mut self,
        round: u64,
        r: &OpenRound,
        m: &Held,
        heads: usize,
    ) -> Result<(), String> {
        let body = match &m.body {
            Some(body) => std::borrow::Cow::Borrowed(body),
            None => std::borrow::Cow::Owned(
                self.store
                    .round_update_body(round, &m.client)
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("{}'s update is not in the store", m.client))?,
            ),
        };
        decode_kept(&body, &r.codec, heads, &mut self.scratch)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Makes `state` the server's (the optimiser's and SCAFFOLD's).
    pub(super) fn adopt_state(&mut self, state: OptState) {
        self.control = self.control_of(&state);
        self.opt_state = state;
    }
}
