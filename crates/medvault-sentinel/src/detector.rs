//! The detector: what it remembers of the log so far, the signals it reads off each event, and
//! the score those signals add up to.
//!
//! Three models feed one score:
//! - **rules** over the roster (same family name or address as the patient, a colleague's or
//!   one's own record, a VIP, a record opened after death), whose weight drops when the access
//!   came with a care relationship;
//! - **learned baselines** per user and per peer group (role × department): every contextual
//!   signal (no relationship, never related, new to the user, outside the department, off
//!   shift, search-then-open, a new workstation or client, …) counts by how rarely this user —
//!   shrunk towards their peer group while their own history is short — has shown it, so a
//!   radiographer opening records of patients they have no relationship with costs little and
//!   a ward nurse doing it costs much;
//! - a **relational model** of the user–patient access graph: users who open the same
//!   patients form care neighbourhoods (Chen & Malin's community-based detection); an access
//!   to a patient none of whose recent accessors share patients or a department with the user
//!   is outside the user's community, and a patient nobody has cared for in 30 days is not
//!   under care at all.
//!
//! An event's score is `1 - exp(-Σ contributions / SCALE)`, in [0, 1]; its reasons are the
//! largest contributions with their signals' values. The detector only ever looks backwards:
//! an event is scored before it is learned from, as it would be live.

use std::collections::{HashMap, VecDeque};

use crate::event::{
    Action, Event, Outcome, Relationship, Roster, RosterPatient, RosterUser, Shift,
};

/// Everything the detector can say about one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Signal {
    /// The user and the patient share a family-name token.
    SameFamily,
    /// The user and the patient share an address token.
    SameAddress,
    /// The patient is another member of staff.
    ColleagueRecord,
    /// The patient is the user themselves.
    OwnRecord,
    /// The patient is flagged VIP.
    Vip,
    /// The access came after the patient's death (value: days since).
    AfterDeath,
    /// The user is not in the roster.
    UnknownUser,
    /// The patient is not in the roster.
    UnknownPatient,
    /// No care relationship was found for this access.
    NoRelationship,
    /// The user has never had a care relationship with this patient.
    NeverRelated,
    /// The user first opened this patient in the last two hours.
    NewToUser,
    /// The patient has never been cared for in the user's department.
    OutsideDepartment,
    /// None of the patient's recent accessors share patients or a department with the user.
    OutsideCareCommunity,
    /// Nobody has cared for the patient in the last 30 days (value: days since, 365 if never).
    NoRecentCare,
    /// The user searched for this patient just before opening them for the first time.
    SearchThenOpen,
    /// The access falls outside the user's shift (value: hours outside).
    OffShift,
    /// An address the user has not worked from before.
    NewAddress,
    /// A client the user has not used before.
    NewClient,
    /// The request was denied.
    Denied,
    /// Break-glass emergency access.
    BreakGlass,
    /// An export or a print.
    ExportOrPrint,
    /// No purpose of use was given.
    NoPurpose,
    /// Unrelated patients the user opened for the first time in the last hour (value: count).
    Volume,
    /// Denied requests by the user in the last ten minutes (value: count).
    DeniedBurst,
}

/// Every signal, in the order of the feature vector.
pub const SIGNALS: [Signal; 24] = [
    Signal::SameFamily,
    Signal::SameAddress,
    Signal::ColleagueRecord,
    Signal::OwnRecord,
    Signal::Vip,
    Signal::AfterDeath,
    Signal::UnknownUser,
    Signal::UnknownPatient,
    Signal::NoRelationship,
    Signal::NeverRelated,
    Signal::NewToUser,
    Signal::OutsideDepartment,
    Signal::OutsideCareCommunity,
    Signal::NoRecentCare,
    Signal::SearchThenOpen,
    Signal::OffShift,
    Signal::NewAddress,
    Signal::NewClient,
    Signal::Denied,
    Signal::BreakGlass,
    Signal::ExportOrPrint,
    Signal::NoPurpose,
    Signal::Volume,
    Signal::DeniedBurst,
];

/// The signals scored by how rarely the user and their peers show them.
const LEARNED: [Signal; 14] = [
    Signal::NoRelationship,
    Signal::NeverRelated,
    Signal::NewToUser,
    Signal::OutsideDepartment,
    Signal::OutsideCareCommunity,
    Signal::NoRecentCare,
    Signal::SearchThenOpen,
    Signal::OffShift,
    Signal::NewAddress,
    Signal::NewClient,
    Signal::Denied,
    Signal::BreakGlass,
    Signal::ExportOrPrint,
    Signal::NoPurpose,
];

impl Signal {
    /// The signal's name in reasons and in the feature header.
    pub fn name(self) -> &'static str {
        match self {
            Self::SameFamily => "same_family",
            Self::SameAddress => "same_address",
            Self::ColleagueRecord => "colleague_record",
            Self::OwnRecord => "own_record",
            Self::Vip => "vip",
            Self::AfterDeath => "after_death",
            Self::UnknownUser => "unknown_user",
            Self::UnknownPatient => "unknown_patient",
            Self::NoRelationship => "no_relationship",
            Self::NeverRelated => "never_related",
            Self::NewToUser => "new_to_user",
            Self::OutsideDepartment => "outside_department",
            Self::OutsideCareCommunity => "outside_care_community",
            Self::NoRecentCare => "no_recent_care",
            Self::SearchThenOpen => "search_then_open",
            Self::OffShift => "off_shift",
            Self::NewAddress => "new_address",
            Self::NewClient => "new_client",
            Self::Denied => "denied",
            Self::BreakGlass => "break_glass",
            Self::ExportOrPrint => "export_or_print",
            Self::NoPurpose => "no_purpose",
            Self::Volume => "volume",
            Self::DeniedBurst => "denied_burst",
        }
    }

    /// A rule over the roster (as opposed to a learned or counted signal).
    pub fn is_rule(self) -> bool {
        matches!(
            self,
            Self::SameFamily
                | Self::SameAddress
                | Self::ColleagueRecord
                | Self::OwnRecord
                | Self::Vip
                | Self::AfterDeath
                | Self::UnknownUser
                | Self::UnknownPatient
        )
    }

    fn index(self) -> usize {
        // SIGNALS lists every variant once, in declaration order.
        self as usize
    }

    fn learned_index(self) -> Option<usize> {
        LEARNED.iter().position(|s| *s == self)
    }

    /// Weight of a roster rule, or of a learned signal's surprise.
    fn weight(self) -> f64 {
        match self {
            Self::SameFamily => 4.0,
            Self::SameAddress => 3.0,
            Self::ColleagueRecord => 2.5,
            Self::OwnRecord => 3.0,
            Self::Vip => 3.0,
            Self::AfterDeath => 3.0,
            Self::UnknownUser | Self::UnknownPatient => 1.0,
            Self::NoRelationship => 0.5,
            Self::NeverRelated => 0.8,
            Self::NewToUser => 0.5,
            Self::OutsideDepartment => 0.8,
            Self::OutsideCareCommunity => 1.0,
            Self::NoRecentCare => 1.2,
            Self::SearchThenOpen => 0.6,
            Self::OffShift => 0.6,
            Self::NewAddress => 0.6,
            Self::NewClient => 0.5,
            Self::Denied => 0.4,
            Self::BreakGlass => 0.6,
            Self::ExportOrPrint => 0.3,
            Self::NoPurpose => 0.3,
            Self::Volume => 0.8,
            Self::DeniedBurst => 0.5,
        }
    }
}

/// The scale of the score: `1 - exp(-total / SCALE)`.
const SCALE: f64 = 5.0;
/// How many of a user's own events weigh as much as their peer group's rate.
const SHRINK: f64 = 20.0;
/// The largest surprise one signal can add (a rate of about 1 in 1 100).
const MAX_SURPRISE: f64 = 7.0;
/// Roster rules weigh this much when the access came with a care relationship.
const RELATED_FACTOR: f64 = 0.15;
const HOUR: i64 = 3600;
const DAY: i64 = 24 * HOUR;
/// A patient nobody has cared for in this long is not under care.
const CARE_WINDOW: i64 = 30 * DAY;
/// Accessors of a patient older than this do not define the patient's care neighbourhood.
const COMMUNITY_WINDOW: i64 = 14 * DAY;
/// Accessors remembered per patient.
const RECENT_PER_PATIENT: usize = 24;
/// Addresses and clients remembered per user.
const SEEN_PER_USER: usize = 64;
/// User–patient pairs remembered at most: beyond it, pairs untouched for [`PAIR_HORIZON`] are
/// forgotten (a user back after that long is new to the patient again), then the least
/// recently touched tenth.
pub const MAX_PAIRS: usize = 4_000_000;
const PAIR_HORIZON: i64 = 180 * DAY;
/// User–user co-access counts remembered at most: beyond it every count is halved and those
/// that reach 0 are forgotten (the care community graph decays instead of growing).
pub const MAX_CO_ACCESS: usize = 2_000_000;
/// Most patients the detector holds (about 350 bytes each with a pair); beyond it the least
/// recently seen tenth is forgotten.
pub const MAX_PATIENTS: usize = 500_000;
/// Events a group needs before its own volume baseline is used (else its role's, or all).
const VOLUME_BASELINE_EVENTS: f64 = 500.0;
/// How much an alerting event counts in its user's own baseline.
const ALERT_WEIGHT: f64 = 0.1;
/// Events of a user before new addresses and clients count.
const SETTLED_AFTER: f64 = 20.0;

/// One event's score and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    /// In [0, 1].
    pub score: f64,
    /// At or above the alert threshold.
    pub alert: bool,
    /// The largest contributions, largest first.
    pub reasons: Vec<Reason>,
    /// Every signal's raw value, in [`SIGNALS`] order (the feature vector).
    pub features: [f64; SIGNALS.len()],
}

impl Score {
    /// The score of an event that is no one's access to a record: 0, no reasons.
    pub fn none() -> Self {
        Self {
            score: 0.0,
            alert: false,
            reasons: Vec::new(),
            features: [0.0; SIGNALS.len()],
        }
    }
}

/// A signal that contributed to a score.
#[derive(Debug, Clone, PartialEq)]
pub struct Reason {
    pub signal: Signal,
    /// The signal's raw value (1 for a signal that is simply present).
    pub value: f64,
    /// What it added to the total before scaling.
    pub contribution: f64,
}

/// How many reasons a score carries at most, and the least contribution that counts as one.
const REASONS: usize = 5;
const MIN_REASON: f64 = 0.25;

/// Interns strings to dense ids.
#[derive(Debug, Default)]
struct Names {
    ids: HashMap<Box<str>, u32>,
    /// Ids whose names were forgotten, given out again before new ones.
    free: Vec<u32>,
}

impl Names {
    fn id(&mut self, name: &str) -> u32 {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = self
            .free
            .pop()
            .unwrap_or_else(|| u32::try_from(self.ids.len()).unwrap_or(u32::MAX));
        self.ids.insert(name.into(), id);
        id
    }

    fn get(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }

    /// Forgets the names whose ids `gone` marks; their ids are given out again.
    fn forget(&mut self, gone: &[bool]) {
        self.ids.retain(|_, id| {
            let forget = gone.get(*id as usize).copied().unwrap_or(false);
            if forget {
                self.free.push(*id);
            }
            !forget
        });
    }
}

#[derive(Debug, Default, Clone)]
struct Counts {
    /// Events learned (an alerting event counts [`ALERT_WEIGHT`] in a user's own counts).
    events: f64,
    signals: [f64; LEARNED.len()],
}

#[derive(Debug)]
struct UserState {
    known: bool,
    /// The peer group (role × department) and the role's group across departments.
    group: u32,
    role_group: u32,
    department: Option<u32>,
    family: Option<u64>,
    address: Option<u64>,
    shift: Option<Shift>,
    counts: Counts,
    /// Times of unrelated patients first opened, within the last hour.
    new_unrelated: VecDeque<i64>,
    /// Times of denied requests, within the last ten minutes.
    denied: VecDeque<i64>,
    /// Addresses and clients the user has used (by fingerprint), with when each was first seen.
    addresses: Vec<(u64, i64)>,
    clients: Vec<(u64, i64)>,
}

#[derive(Debug, Default)]
struct PatientState {
    known: bool,
    family: Option<u64>,
    address: Option<u64>,
    vip: bool,
    employee: Option<u32>,
    deceased_at: Option<i64>,
    departments: Vec<u32>,
    /// Recent accessors and when they last opened the patient.
    recent: VecDeque<(u32, i64)>,
    last_care: Option<i64>,
    /// The patient's latest event: the least recent are forgotten first when the detector
    /// holds [`MAX_PATIENTS`].
    last: i64,
}

#[derive(Debug, Clone, Copy)]
struct Pair {
    first: i64,
    /// The pair's latest access.
    last: i64,
    related: bool,
    searched: Option<i64>,
}

#[derive(Debug, Default, Clone)]
struct Group {
    counts: Counts,
    /// Running mean and variance of the volume signal at this group's events.
    volume_mean: f64,
    volume_var: f64,
}

/// The detector's whole memory. Feed it events in time order with [`Detector::score`].
#[derive(Debug)]
pub struct Detector {
    threshold: f64,
    users: Names,
    user_state: Vec<UserState>,
    patients: Names,
    patient_state: Vec<PatientState>,
    departments: Names,
    groups: Names,
    group_state: Vec<Group>,
    /// Every event's counts: where a new role's baseline starts.
    all: Group,
    /// Family and address tokens, addresses and clients are only compared: kept as keyed 64-bit
    /// fingerprints, so that a node's millions of them are not interned.
    fingerprints: std::hash::RandomState,
    pairs: HashMap<u64, Pair>,
    /// Patients two users have both opened, keyed by the user pair (smaller id first).
    co_access: HashMap<u64, u32>,
    max_pairs: usize,
    max_co_access: usize,
    max_patients: usize,
}

fn pair_key(a: u32, b: u32) -> u64 {
    (u64::from(a) << 32) | u64::from(b)
}

/// The default alert threshold.
pub const DEFAULT_THRESHOLD: f64 = 0.85;

impl Detector {
    /// A detector that knows `roster` and has seen no events.
    pub fn new(roster: &Roster) -> Self {
        let mut d = Self {
            threshold: DEFAULT_THRESHOLD,
            users: Names::default(),
            user_state: Vec::new(),
            patients: Names::default(),
            patient_state: Vec::new(),
            departments: Names::default(),
            groups: Names::default(),
            group_state: Vec::new(),
            all: Group::default(),
            fingerprints: std::hash::RandomState::new(),
            pairs: HashMap::new(),
            co_access: HashMap::new(),
            max_pairs: MAX_PAIRS,
            max_co_access: MAX_CO_ACCESS,
            max_patients: MAX_PATIENTS,
        };
        for u in &roster.users {
            d.add_user(u);
        }
        for p in &roster.patients {
            d.add_patient(p);
        }
        d
    }

    /// Adds a user to the roster, or replaces what it said of them (a live node learns its
    /// users as the log names them).
    pub fn add_user(&mut self, u: &RosterUser) {
        let id = self.user(&u.id, u.role.as_deref(), u.department.as_deref());
        let family = u.family_token.as_deref().map(|t| self.fingerprint(t));
        let address = u.address_token.as_deref().map(|t| self.fingerprint(t));
        let state = &mut self.user_state[id as usize];
        state.known = true;
        state.family = family;
        state.address = address;
        state.shift = u.shift;
    }

    /// Adds a patient to the roster, or replaces what it said of them; the departments that
    /// cared for the patient are kept and added to.
    pub fn add_patient(&mut self, p: &RosterPatient) {
        let id = self.patient(&p.id);
        let family = p.family_token.as_deref().map(|t| self.fingerprint(t));
        let address = p.address_token.as_deref().map(|t| self.fingerprint(t));
        let employee = p.employee_user.as_deref().map(|u| self.user(u, None, None));
        let departments: Vec<u32> = p
            .departments
            .iter()
            .map(|x| self.departments.id(x))
            .collect();
        let state = &mut self.patient_state[id as usize];
        state.known = true;
        state.family = family;
        state.address = address;
        state.vip = p.vip;
        state.employee = employee;
        state.deceased_at = p.deceased_at;
        for d in departments {
            if !state.departments.contains(&d) {
                state.departments.push(d);
            }
        }
    }

    /// True if the roster names user `id`.
    pub fn knows_user(&self, id: &str) -> bool {
        self.users
            .ids
            .get(id)
            .is_some_and(|u| self.user_state[*u as usize].known)
    }

    /// True if the roster names patient `id`.
    pub fn knows_patient(&self, id: &str) -> bool {
        self.patients
            .ids
            .get(id)
            .is_some_and(|p| self.patient_state[*p as usize].known)
    }

    /// Sets the alert threshold (in [0, 1]).
    #[must_use]
    pub fn with_threshold(mut self, threshold: f64) -> Self {
        self.threshold = threshold.clamp(0.0, 1.0);
        self
    }

    fn user(&mut self, name: &str, role: Option<&str>, department: Option<&str>) -> u32 {
        let id = self.users.id(name);
        if id as usize == self.user_state.len() {
            let (group, role_group) = self.group(role, department);
            let department = department.map(|x| self.departments.id(x));
            self.user_state.push(UserState {
                known: false,
                group,
                role_group,
                department,
                family: None,
                address: None,
                shift: None,
                counts: Counts::default(),
                new_unrelated: VecDeque::new(),
                denied: VecDeque::new(),
                addresses: Vec::new(),
                clients: Vec::new(),
            });
        } else if role.is_some() || department.is_some() {
            // The roster (read first) or the first event named the user's place; a roster
            // entry without one takes it from the log.
            let state = &self.user_state[id as usize];
            if state.department.is_none() && department.is_some() {
                let (group, role_group) = self.group(role, department);
                let department = department.map(|x| self.departments.id(x));
                let state = &mut self.user_state[id as usize];
                state.group = group;
                state.role_group = role_group;
                state.department = department;
            }
        }
        id
    }

    /// The peer group of a role in a department, and the role's group across departments
    /// (created as needed).
    fn group(&mut self, role: Option<&str>, department: Option<&str>) -> (u32, u32) {
        let mut id = |key: String| {
            let id = self.groups.id(&key);
            if id as usize == self.group_state.len() {
                self.group_state.push(Group::default());
            }
            id
        };
        let role = role.unwrap_or("?");
        let group = id(format!("{role}\u{1f}{}", department.unwrap_or("?")));
        (group, id(format!("{role}\u{1f}*")))
    }

    fn patient(&mut self, name: &str) -> u32 {
        if let Some(id) = self.patients.get(name) {
            return id;
        }
        if self.patients.ids.len() >= self.max_patients {
            self.forget_patients();
        }
        let id = self.patients.id(name);
        match self.patient_state.get_mut(id as usize) {
            Some(reused) => *reused = PatientState::default(),
            None => self.patient_state.push(PatientState::default()),
        }
        id
    }

    fn fingerprint(&self, s: &str) -> u64 {
        use std::hash::BuildHasher;
        self.fingerprints.hash_one(s)
    }

    /// Scores `e`, then learns from it.
    pub fn score(&mut self, e: &Event<'_>) -> Score {
        let mut f = [0.0; SIGNALS.len()];
        let mut set = |s: Signal, v: f64| f[s.index()] = v;
        let u = self.user(&e.user, e.role.as_deref(), e.department.as_deref());
        // Registering a new patient is not looking at anyone's record: the patient signals are
        // left out and the detector keeps nothing of the patient until someone opens it (a
        // node registering thousands an hour would otherwise hold them all).
        let registers = e.action == Action::Create && e.resource_type.as_deref() == Some("Patient");
        let p = e
            .patient
            .as_deref()
            .filter(|_| !registers)
            .map(|p| self.patient(p));
        let address = e.address.as_deref().map(|a| self.fingerprint(a));
        let client = e.client.as_deref().map(|c| self.fingerprint(c));
        let now = e.time;
        let related_now = e.relationship != Relationship::None;
        let opens = !matches!(e.action, Action::Login | Action::Receive);
        let user = &self.user_state[u as usize];
        set(Signal::UnknownUser, f64::from(u8::from(!user.known)));
        if !related_now && opens && p.is_some() {
            set(Signal::NoRelationship, 1.0);
        }
        if let Some(shift) = user.shift {
            let minute = u16::try_from(now.rem_euclid(DAY) / 60).unwrap_or(0);
            let outside = f64::from(shift.minutes_outside(minute)) / 60.0;
            if outside > 0.5 {
                set(Signal::OffShift, outside);
            }
        }
        // New: never used before, or first used in the last two hours (one sitting).
        let settled = user.counts.events >= SETTLED_AFTER;
        let new = |seen: &[(u64, i64)], x: Option<u64>| {
            x.is_some_and(|x| {
                seen.iter()
                    .find(|(y, _)| *y == x)
                    .is_none_or(|(_, first)| now - first < 2 * HOUR)
            })
        };
        if settled && new(&user.addresses, address) {
            set(Signal::NewAddress, 1.0);
        }
        if settled && new(&user.clients, client) {
            set(Signal::NewClient, 1.0);
        }
        let denied = e.outcome == Outcome::Denied;
        if denied {
            set(Signal::Denied, 1.0);
        }
        let recent_denied = user
            .denied
            .iter()
            .filter(|t| now - **t < 600)
            .count()
            .saturating_add(usize::from(denied));
        if recent_denied > 1 {
            set(Signal::DeniedBurst, recent_denied as f64);
        }
        if e.break_glass {
            set(Signal::BreakGlass, 1.0);
        }
        if matches!(e.action, Action::Export | Action::Print) {
            set(Signal::ExportOrPrint, 1.0);
        }
        if e.purpose.is_none() && opens {
            set(Signal::NoPurpose, 1.0);
        }
        let mut new_unrelated = false;
        if let Some(p) = p {
            let patient = &self.patient_state[p as usize];
            let pair = self.pairs.get(&pair_key(u, p)).copied();
            set(Signal::UnknownPatient, f64::from(u8::from(!patient.known)));
            if patient.known {
                let both = |a: Option<u64>, b: Option<u64>| a.is_some() && a == b;
                if patient.employee == Some(u) {
                    set(Signal::OwnRecord, 1.0);
                } else {
                    if both(user.family, patient.family) {
                        set(Signal::SameFamily, 1.0);
                    }
                    if both(user.address, patient.address) {
                        set(Signal::SameAddress, 1.0);
                    }
                    if patient.employee.is_some() {
                        set(Signal::ColleagueRecord, 1.0);
                    }
                }
                if patient.vip {
                    set(Signal::Vip, 1.0);
                }
                if let Some(died) = patient.deceased_at.filter(|d| now > *d) {
                    set(
                        Signal::AfterDeath,
                        ((now - died) as f64 / DAY as f64).max(0.01),
                    );
                }
                if user
                    .department
                    .is_some_and(|d| !patient.departments.contains(&d))
                {
                    set(Signal::OutsideDepartment, 1.0);
                }
            }
            let related_before = pair.is_some_and(|x| x.related);
            if !related_now && !related_before {
                set(Signal::NeverRelated, 1.0);
            }
            let new = pair.is_none_or(|x| now - x.first < 2 * HOUR);
            if new {
                set(Signal::NewToUser, 1.0);
            }
            if new
                && e.action != Action::Search
                && pair.and_then(|x| x.searched).is_some_and(|t| now - t < 600)
            {
                set(Signal::SearchThenOpen, 1.0);
            }
            // A care relationship now is the patient under this user's care: the signals that
            // ask whether anyone cares for the patient, and whether the user is near those
            // who do, have their answer.
            match patient.last_care {
                _ if related_now => {}
                Some(t) if now - t < CARE_WINDOW => {}
                Some(t) => set(Signal::NoRecentCare, ((now - t) / DAY).min(365) as f64),
                None => set(Signal::NoRecentCare, 365.0),
            }
            let mut community = if related_now { f64::INFINITY } else { 0.0 };
            for (v, t) in &patient.recent {
                if *v == u || now - t > COMMUNITY_WINDOW {
                    continue;
                }
                let shared = self
                    .co_access
                    .get(&pair_key(u.min(*v), u.max(*v)))
                    .copied()
                    .unwrap_or(0);
                community += f64::from(shared).ln_1p();
                if user.department.is_some()
                    && user.department == self.user_state[*v as usize].department
                {
                    community += 0.5;
                }
            }
            if community < 1.0 {
                set(Signal::OutsideCareCommunity, 1.0);
            }
            new_unrelated = new && !related_now && !related_before && pair.is_none();
        }
        let volume = user
            .new_unrelated
            .iter()
            .filter(|t| now - **t < HOUR)
            .count()
            + usize::from(new_unrelated);
        if volume > 0 {
            set(Signal::Volume, volume as f64);
        }

        // The contributions.
        let baselines = [
            &self.group_state[user.group as usize],
            &self.group_state[user.role_group as usize],
            &self.all,
        ];
        // The volume baseline of the narrowest group that has seen enough events.
        let volume_baseline = baselines
            .iter()
            .find(|g| g.counts.events >= VOLUME_BASELINE_EVENTS)
            .unwrap_or(&baselines[2]);
        let rule_factor = if related_now { RELATED_FACTOR } else { 1.0 };
        let mut contributions: Vec<(Signal, f64)> = Vec::with_capacity(8);
        for s in SIGNALS {
            let value = f[s.index()];
            if value == 0.0 {
                continue;
            }
            let c = match s {
                Signal::SameFamily
                | Signal::SameAddress
                | Signal::ColleagueRecord
                | Signal::OwnRecord
                | Signal::Vip => s.weight() * rule_factor,
                Signal::AfterDeath => {
                    s.weight() * rule_factor * (0.5 + 0.5 * (value / 30.0).min(1.0))
                }
                Signal::UnknownUser | Signal::UnknownPatient => s.weight(),
                Signal::Volume => {
                    let z = (value - volume_baseline.volume_mean)
                        / (volume_baseline.volume_var + 1.0).sqrt();
                    s.weight() * (z - 3.0).clamp(0.0, 6.0)
                }
                Signal::DeniedBurst => s.weight() * (value - 3.0).clamp(0.0, 6.0),
                learned => {
                    let i = learned.learned_index().unwrap_or(0);
                    s.weight() * surprise(&user.counts, &baselines, i)
                }
            };
            if c > 0.0 {
                contributions.push((s, c));
            }
        }
        let total: f64 = contributions.iter().map(|(_, c)| c).sum();
        let score = 1.0 - (-total / SCALE).exp();
        contributions.sort_by(|a, b| b.1.total_cmp(&a.1));
        // The roster's rules first (what a privacy officer can check against the record), then
        // the largest of the rest, up to REASONS; listed largest first.
        let mut reasons: Vec<Reason> = contributions
            .iter()
            .filter(|(_, c)| *c >= MIN_REASON)
            .filter(|(s, _)| s.is_rule())
            .chain(
                contributions
                    .iter()
                    .filter(|(_, c)| *c >= MIN_REASON)
                    .filter(|(s, _)| !s.is_rule()),
            )
            .take(REASONS)
            .map(|(s, c)| Reason {
                signal: *s,
                value: f[s.index()],
                contribution: *c,
            })
            .collect();
        reasons.sort_by(|a, b| b.contribution.total_cmp(&a.contribution));
        let out = Score {
            score,
            alert: score >= self.threshold,
            reasons,
            features: f,
        };
        // An alerting event teaches the user's own baseline little of what is normal for them
        // (a burst of snooping would otherwise lower the scores of its own later events); peer
        // groups learn every event, so a whole group's new way of working stops alerting.
        let weight = if out.alert { ALERT_WEIGHT } else { 1.0 };
        self.learn(e, u, p, address, client, &f, new_unrelated, weight);
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn learn(
        &mut self,
        e: &Event<'_>,
        u: u32,
        p: Option<u32>,
        address: Option<u64>,
        client: Option<u64>,
        f: &[f64; SIGNALS.len()],
        new_unrelated: bool,
        weight: f64,
    ) {
        let now = e.time;
        let related_now = e.relationship != Relationship::None;
        let user = &mut self.user_state[u as usize];
        let learn = |counts: &mut Counts, weight: f64| {
            counts.events += weight;
            for (i, s) in LEARNED.iter().enumerate() {
                if f[s.index()] != 0.0 {
                    counts.signals[i] += weight;
                }
            }
        };
        learn(&mut user.counts, weight);
        let v = f[Signal::Volume.index()];
        for g in [user.group, user.role_group] {
            learn_group(&mut self.group_state[g as usize], v, |c| learn(c, 1.0));
        }
        learn_group(&mut self.all, v, |c| learn(c, 1.0));
        if new_unrelated {
            user.new_unrelated.push_back(now);
        }
        while user.new_unrelated.front().is_some_and(|t| now - t >= HOUR) {
            user.new_unrelated.pop_front();
        }
        if e.outcome == Outcome::Denied {
            user.denied.push_back(now);
        }
        while user.denied.front().is_some_and(|t| now - t >= 600) {
            user.denied.pop_front();
        }
        for (seen, new) in [(&mut user.addresses, address), (&mut user.clients, client)] {
            if let Some(x) = new.filter(|x| !seen.iter().any(|(y, _)| y == x)) {
                if seen.len() >= SEEN_PER_USER {
                    seen.remove(0);
                }
                seen.push((x, now));
            }
        }
        let department = user.department;
        let Some(p) = p else { return };
        let key = pair_key(u, p);
        let first_time = !self.pairs.contains_key(&key);
        if first_time && self.pairs.len() >= self.max_pairs {
            self.forget_pairs(now);
        }
        let pair = self.pairs.entry(key).or_insert(Pair {
            first: now,
            last: now,
            related: false,
            searched: None,
        });
        pair.last = now;
        pair.related |= related_now && e.outcome == Outcome::Allowed;
        if e.action == Action::Search {
            pair.searched = Some(now);
        }
        let patient = &mut self.patient_state[p as usize];
        patient.last = patient.last.max(now);
        if related_now && e.outcome == Outcome::Allowed {
            patient.last_care = Some(now);
            if let Some(d) = department.filter(|d| !patient.departments.contains(d)) {
                patient.departments.push(d);
            }
        }
        if first_time && self.co_access.len() >= self.max_co_access {
            self.co_access.retain(|_, n| {
                *n /= 2;
                *n > 0
            });
        }
        if first_time {
            for (v, t) in &patient.recent {
                if *v != u && now - t <= COMMUNITY_WINDOW {
                    *self
                        .co_access
                        .entry(pair_key(u.min(*v), u.max(*v)))
                        .or_insert(0) += 1;
                }
            }
        }
        if let Some(at) = patient.recent.iter().position(|(v, _)| *v == u) {
            patient.recent.remove(at);
        } else if patient.recent.len() >= RECENT_PER_PATIENT {
            patient.recent.pop_front();
        }
        patient.recent.push_back((u, now));
    }
}

impl Detector {
    /// Forgets pairs untouched for [`PAIR_HORIZON`], then, if that was not enough, the least
    /// recently touched tenth.
    fn forget_pairs(&mut self, now: i64) {
        self.pairs.retain(|_, p| now - p.last < PAIR_HORIZON);
        if self.pairs.len() >= self.max_pairs {
            let mut lasts: Vec<i64> = self.pairs.values().map(|p| p.last).collect();
            let tenth = lasts.len() / 10;
            let (_, cutoff, _) = lasts.select_nth_unstable(tenth);
            let cutoff = *cutoff;
            self.pairs.retain(|_, p| p.last > cutoff);
        }
    }

    /// Forgets the least recently seen tenth of the patients (at least one), and their pairs:
    /// a patient seen again is looked up and learned anew, as one never seen.
    fn forget_patients(&mut self) {
        let live = self.patients.ids.len();
        if live == 0 {
            return;
        }
        let mut lasts: Vec<i64> = self
            .patients
            .ids
            .values()
            .map(|id| self.patient_state[*id as usize].last)
            .collect();
        let tenth = (live / 10).max(1) - 1;
        let (_, cutoff, _) = lasts.select_nth_unstable(tenth);
        let cutoff = *cutoff;
        let mut gone = vec![false; self.patient_state.len()];
        let mut forgotten = 0;
        for id in self.patients.ids.values() {
            if self.patient_state[*id as usize].last <= cutoff && forgotten <= tenth {
                gone[*id as usize] = true;
                forgotten += 1;
            }
        }
        self.patients.forget(&gone);
        for (id, state) in self.patient_state.iter_mut().enumerate() {
            if gone[id] {
                *state = PatientState::default();
            }
        }
        self.pairs
            .retain(|k, _| !gone[(*k & u64::from(u32::MAX)) as usize]);
    }

    /// Bounds the patients held (by default [`MAX_PATIENTS`]; the least recently seen tenth
    /// is forgotten when it is reached).
    #[must_use]
    pub fn with_patients(mut self, patients: usize) -> Self {
        self.max_patients = patients.max(10);
        self
    }

    /// True if the detector holds user `id` (named by an event or the roster).
    pub fn holds_user(&self, id: &str) -> bool {
        self.users.get(id).is_some()
    }

    /// True if the detector holds patient `id` (opened by an event, or on the roster, and not
    /// forgotten since).
    pub fn holds_patient(&self, id: &str) -> bool {
        self.patients.get(id).is_some()
    }

    /// How many patients the detector holds.
    pub fn patients_held(&self) -> usize {
        self.patients.ids.len()
    }

    /// Bounds the pairs and co-access counts remembered (by default [`MAX_PAIRS`] and
    /// [`MAX_CO_ACCESS`]).
    #[must_use]
    pub fn with_memory(mut self, pairs: usize, co_access: usize) -> Self {
        self.max_pairs = pairs.max(10);
        self.max_co_access = co_access.max(10);
        self
    }

    /// How many user–patient pairs and co-access counts the detector holds (its memory is
    /// bounded by [`MAX_PAIRS`] and [`MAX_CO_ACCESS`]).
    pub fn remembered(&self) -> (usize, usize) {
        (self.pairs.len(), self.co_access.len())
    }
}

/// Learns one event into a group's counts and its volume baseline (an exponentially weighted
/// mean and variance).
fn learn_group(group: &mut Group, volume: f64, learn: impl Fn(&mut Counts)) {
    learn(&mut group.counts);
    let alpha = 1.0 / group.counts.events.clamp(1.0, 2000.0);
    let delta = volume - group.volume_mean;
    group.volume_mean += alpha * delta;
    group.volume_var = (1.0 - alpha) * (group.volume_var + alpha * delta * delta);
}

/// How surprising learned signal `i` is for this user: `-ln` of its rate among the user's own
/// events, shrunk towards the peer group's rate while the user's history is short, which is
/// shrunk towards the role's, which is shrunk towards every event's (`baselines`: peer group,
/// role, all).
fn surprise(user: &Counts, baselines: &[&Group; 3], i: usize) -> f64 {
    let all = &baselines[2].counts;
    let mut rate = (all.signals[i] + 0.5) / (all.events + 1.0);
    for counts in [&baselines[1].counts, &baselines[0].counts, user] {
        rate = (counts.signals[i] + SHRINK * rate) / (counts.events + SHRINK);
    }
    (-rate.ln()).clamp(0.0, MAX_SURPRISE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roster() -> Roster {
        serde_json::from_value(serde_json::json!({
            "users": [
                {"id": "nurse", "role": "nurse", "department": "cardiology",
                 "family_token": "fA", "address_token": "aA",
                 "shift": {"start": "07:00", "end": "19:00"}},
                {"id": "colleague", "role": "nurse", "department": "cardiology",
                 "family_token": "fB", "address_token": "aB",
                 "shift": {"start": "07:00", "end": "19:00"}}
            ],
            "patients": [
                {"id": "sister", "family_token": "fA", "address_token": "aZ", "departments": []},
                {"id": "ward", "family_token": "fC", "address_token": "aC",
                 "departments": ["cardiology"]},
                {"id": "star", "family_token": "fD", "vip": true, "departments": []}
            ]
        }))
        .unwrap()
    }

    fn event(hour: i64, user: &str, patient: &str, rel: &str) -> String {
        serde_json::json!({
            "time": format!("2026-11-0{}T{:02}:00:00Z", 1 + hour / 24, hour % 24),
            "user": user, "role": "nurse", "department": "cardiology", "patient": patient,
            "action": "read", "purpose": "TREAT", "outcome": "allowed",
            "relationship": rel, "client": "ehr", "address": "10.0.0.1"
        })
        .to_string()
    }

    fn score(d: &mut Detector, line: &str) -> Score {
        d.score(&serde_json::from_str(line).unwrap())
    }

    #[test]
    fn a_relatives_record_outscores_routine_care_and_says_why() {
        let mut d = Detector::new(&roster());
        // A week of routine care of the ward patient by both nurses.
        for h in 0..7 * 24 {
            if (8..18).contains(&(h % 24)) {
                score(&mut d, &event(h, "nurse", "ward", "care-team"));
                score(&mut d, &event(h, "colleague", "ward", "care-team"));
            }
        }
        let routine = score(&mut d, &event(7 * 24 + 9, "nurse", "ward", "care-team"));
        let snoop = score(&mut d, &event(7 * 24 + 10, "nurse", "sister", "none"));
        assert!(routine.score < 0.2, "{routine:?}");
        assert!(snoop.alert && snoop.score > 0.85, "{snoop:?}");
        assert!(
            snoop.reasons.iter().any(|r| r.signal == Signal::SameFamily),
            "{snoop:?}"
        );
        assert!(snoop.reasons.iter().all(|r| r.contribution >= MIN_REASON));
        // The relationship softens the rule: the same nurse caring for her sister is not alarming.
        let mut d = Detector::new(&roster());
        let cared = score(&mut d, &event(9, "nurse", "sister", "care-team"));
        assert!(!cared.alert, "{cared:?}");
    }

    #[test]
    fn a_group_whose_daily_work_looks_unusual_stops_alerting() {
        // A laboratory, new to the detector, opens patients it has no relationship with all
        // day: its first events may alert, but the group learns them and stops.
        let mut d = Detector::new(&roster());
        d.score(&serde_json::from_str(&event(8, "nurse", "ward", "care-team")).unwrap());
        let mut alerts = Vec::new();
        for i in 0..600 {
            let line = event(
                8 + i / 60,
                &format!("lab{}", i % 3),
                &format!("p{i}"),
                "none",
            )
            .replace("\"nurse\"", "\"technician\"")
            .replace("cardiology", "laboratory");
            alerts.push(score(&mut d, &line).alert);
        }
        let late = alerts[500..].iter().filter(|a| **a).count();
        assert!(late < 10, "{late} of the last 100 alerted");
    }

    #[test]
    fn memory_stays_bounded_over_a_long_log() {
        let mut d = Detector::new(&Roster::default()).with_memory(1_000, 500);
        for i in 0..20_000i64 {
            let line = serde_json::json!({
                "time": crate::event::format_time(1_790_000_000 + i * 60),
                "user": format!("u{}", i % 47), "role": "nurse", "patient": format!("p{}", i % 3_000),
                "action": "read", "outcome": "allowed", "relationship": "care-team",
            })
            .to_string();
            let e: Event<'_> = serde_json::from_str(&line).unwrap();
            let s = d.score(&e);
            assert!((0.0..=1.0).contains(&s.score));
        }
        let (pairs, co) = d.remembered();
        assert!((800..=1_000).contains(&pairs), "{pairs}");
        assert!(co <= 500, "{co}");
    }

    fn at(i: i64, user: &str, patient: &str, action: &str, rtype: &str) -> String {
        serde_json::json!({
            "time": crate::event::format_time(1_790_000_000 + i),
            "user": user, "role": "clerk", "patient": patient, "action": action,
            "resource_type": rtype, "outcome": "allowed", "relationship": "none",
        })
        .to_string()
    }

    #[test]
    fn registering_patients_holds_nothing_of_them() {
        let mut d = Detector::new(&Roster::default());
        for i in 0..5_000 {
            score(
                &mut d,
                &at(i, "clerk", &format!("new{i}"), "create", "Patient"),
            );
        }
        assert_eq!(d.patients_held(), 0);
        assert_eq!(d.remembered(), (0, 0));
        assert!(d.holds_user("clerk"));
        // Opened later, a registered patient is held from then on, and is new to the clerk.
        let s = score(&mut d, &at(6_000, "clerk", "new7", "read", "Patient"));
        assert_eq!(s.features[Signal::NewToUser.index()], 1.0);
        assert!(d.holds_patient("new7") && !d.holds_patient("new8"));
        assert_eq!(d.patients_held(), 1);
    }

    #[test]
    fn the_least_recently_seen_patients_are_forgotten_at_the_bound() {
        let mut d = Detector::new(&roster()).with_patients(100);
        // "ward" is opened every few events; 1 000 other patients once each.
        for i in 0..1_000 {
            score(
                &mut d,
                &at(2 * i, "nurse", &format!("p{i}"), "read", "Observation"),
            );
            if i % 20 == 0 {
                score(
                    &mut d,
                    &at(2 * i + 1, "nurse", "ward", "read", "Observation"),
                );
            }
        }
        let held = d.patients_held();
        assert!((90..=100).contains(&held), "{held}");
        assert!(d.holds_patient("ward") && d.holds_patient("p999"));
        assert!(!d.holds_patient("p0") && !d.holds_patient("sister"));
        // The forgotten patients' pairs went with them.
        let (pairs, _) = d.remembered();
        assert!(pairs <= held, "{pairs} pairs for {held} patients");
        // A forgotten patient seen again is scored as one never seen by this user.
        let again = score(&mut d, &at(5_000, "nurse", "p0", "read", "Observation"));
        assert_eq!(again.features[Signal::NewToUser.index()], 1.0);
        assert!(d.holds_patient("p0"));
    }

    #[test]
    fn unknown_users_and_patients_are_scored_not_dropped() {
        let mut d = Detector::new(&roster());
        let s = score(&mut d, &event(9, "stranger", "nobody", "none"));
        assert_eq!(s.features[Signal::UnknownUser.index()], 1.0);
        assert_eq!(s.features[Signal::UnknownPatient.index()], 1.0);
        assert!(s.score > 0.0);
    }

    #[test]
    fn the_feature_vector_follows_the_signal_list() {
        for (i, s) in SIGNALS.iter().enumerate() {
            assert_eq!(s.index(), i, "{}", s.name());
        }
        let mut names: Vec<_> = SIGNALS.iter().map(|s| s.name()).collect();
        names.dedup();
        assert_eq!(names.len(), SIGNALS.len());
        assert_eq!(LEARNED.len(), 14);
    }
}
