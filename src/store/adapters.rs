//! The sled engine behind every storage port (`ports`): each trait implemented once, over
//! the typed operations of `Db` (in the per-area files beside this one) and the write
//! pipeline. Nothing here decides anything; it maps a port's call onto the engine.

use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use super::ports::Fut;

use super::ports::{
    AttributeStore, BackupStore, CampaignStore, ConditionStore, DashboardStore, Durable,
    IdentityStore, IntegrationStore, JobStore, JobWriter, OperatorStore, PackageStore, Ports,
    RegistryStore, StoreFootprint, TelemetryStore,
};
use super::{
    Agg, ConditionScan, CredentialClash, CredentialKey, Cursor, DeadLetter, DeviceClash, Enqueue,
    JobWrites, Mark, Moved, NameClash, Page, PointsOp, QueueEntry, QueueStats, RawPage, RawQuery,
    Result, Scope, SeriesKey, Store,
};
use crate::model::{
    ApiKey, ApiKeyId, AttributeOwner, AuditEvent, Condition, ConditionId, ConnectionEvent,
    Credential, CredentialId, Device, DeviceId, Fleet, FleetCa, FleetCaId, FleetId, FleetJob,
    FleetJobId, FleetProvisioning, Integration, IntegrationId, Job, JobId, Millis, Point, Schedule,
    ScheduleId, User, UserId, UserSession, Value, Workspace, WorkspaceId,
};

impl Store {
    /// Every port of this store, for the services.
    pub fn ports(&self) -> Ports {
        let s = std::sync::Arc::new(self.clone());
        Ports {
            registry: s.clone(),
            identity: s.clone(),
            attributes: s.clone(),
            telemetry: s.clone(),
            jobs: s.clone(),
            conditions: s.clone(),
            integrations: s.clone(),
            operators: s.clone(),
            packages: s.clone(),
            campaigns: s.clone(),
            dashboards: s.clone(),
            backup: s,
        }
    }
}

impl Durable for Store {
    fn commit(&self) -> BoxFuture<'_, Result<()>> {
        Store::commit(self).boxed()
    }
}

impl RegistryStore for Store {
    fn put_workspace<'a>(
        &'a self,
        ws: &'a Workspace,
        old_name: Option<&'a str>,
    ) -> Fut<'a, std::result::Result<(), NameClash>> {
        done(self.db.put_workspace(ws, old_name))
    }
    fn get_workspace<'a>(&'a self, id: WorkspaceId) -> Fut<'a, Option<Workspace>> {
        done(self.db.get_workspace(id))
    }
    fn list_workspaces<'a>(
        &'a self,
        after: Option<&'a Cursor>,
        limit: usize,
        keep: &'a (dyn Fn(&Workspace) -> bool + Sync),
    ) -> Fut<'a, Page<Workspace>> {
        done(self.db.list_workspaces(after, limit, keep))
    }
    fn delete_workspace<'a>(&'a self, ws: &'a Workspace) -> Fut<'a, bool> {
        done(self.db.delete_workspace(ws))
    }
    fn put_fleet<'a>(
        &'a self,
        fleet: &'a Fleet,
        old_name: Option<&'a str>,
    ) -> Fut<'a, std::result::Result<(), NameClash>> {
        done(self.db.put_fleet(fleet, old_name))
    }
    fn get_fleet<'a>(&'a self, id: FleetId) -> Fut<'a, Option<Fleet>> {
        done(self.db.get_fleet(id))
    }
    fn list_fleets<'a>(
        &'a self,
        after: Option<&'a Cursor>,
        limit: usize,
        keep: &'a (dyn Fn(&Fleet) -> bool + Sync),
    ) -> Fut<'a, Page<Fleet>> {
        done(self.db.list_fleets(after, limit, keep))
    }
    fn delete_fleet<'a>(&'a self, fleet: &'a Fleet) -> Fut<'a, bool> {
        done((|| {
            if !self.db.delete_fleet(fleet)? {
                return Ok(false);
            }
            self.db.delete_provisioning(fleet.id)?;
            self.db
                .delete_owner_attributes(AttributeOwner::Fleet(fleet.id))?;
            Ok(true)
        })())
    }
    fn create_device<'a>(
        &'a self,
        dev: &'a Device,
        creds: &'a [Credential],
    ) -> Fut<'a, std::result::Result<(), DeviceClash>> {
        done(self.db.create_device(dev, creds))
    }
    fn update_device<'a>(
        &'a self,
        dev: &'a Device,
        old: &'a Device,
    ) -> Fut<'a, std::result::Result<(), NameClash>> {
        done(self.db.update_device(dev, old))
    }
    fn get_device<'a>(&'a self, id: DeviceId) -> Fut<'a, Option<Device>> {
        done(self.db.get_device(id))
    }
    fn update_device_record<'a>(
        &'a self,
        id: DeviceId,
        update: &'a (dyn Fn(&mut Device) + Sync),
    ) -> Fut<'a, ()> {
        done(self.db.update_device_record(id, update))
    }
    fn device_by_name<'a>(&'a self, ws: WorkspaceId, name: &'a str) -> Fut<'a, Option<Device>> {
        done(self.db.device_by_name(ws, name))
    }
    fn list_devices<'a>(
        &'a self,
        fleet: Option<FleetId>,
        after: Option<&'a Cursor>,
        limit: usize,
        keep: &'a (dyn Fn(&Device) -> bool + Sync),
    ) -> Fut<'a, Page<Device>> {
        done(self.db.list_devices(fleet, after, limit, keep))
    }
    fn delete_device<'a>(&'a self, dev: &'a Device) -> BoxFuture<'a, Result<()>> {
        async move {
            self.db.delete_device(dev)?;
            // A device's points may be many: deleted off the caller's thread.
            self.delete_device_telemetry_off_thread(dev.id).await?;
            self.db
                .delete_owner_attributes(AttributeOwner::Device(dev.id))?;
            // Logged; the caller's commit (a flush) makes it durable with the rest.
            Store::delete_device_jobs(self, dev.id)?;
            self.db.delete_device_connections(dev.id)?;
            self.db.delete_device_conditions(dev.id)
        }
        .boxed()
    }
    fn update_device_later(&self, id: DeviceId, update: Box<dyn Fn(&mut Device) + Send>) {
        self.apply_later(move |db| {
            if let Err(e) = db.update_device_record(id, &update) {
                tracing::warn!(device = %id, error = %e, "cannot record connection times");
            }
        });
    }
    fn append_connection_later(&self, id: DeviceId, event: ConnectionEvent) {
        self.apply_later(move |db| {
            if let Err(err) = db.append_connection(id, &event) {
                tracing::warn!(device = %id, error = %err, "cannot record connection history");
            }
        });
    }
    fn connections<'a>(&'a self, device: DeviceId) -> Fut<'a, Vec<ConnectionEvent>> {
        done(self.db.connections(device))
    }
}

impl IdentityStore for Store {
    fn add_credential<'a>(
        &'a self,
        cred: &'a Credential,
    ) -> Fut<'a, std::result::Result<(), CredentialClash>> {
        done(self.db.add_credential(cred))
    }
    fn update_credential<'a>(&'a self, cred: &'a Credential) -> Fut<'a, ()> {
        done(self.db.update_credential(cred))
    }
    fn delete_credential<'a>(&'a self, cred: &'a Credential) -> Fut<'a, ()> {
        done(self.db.delete_credential(cred))
    }
    fn credentials_of<'a>(&'a self, device: DeviceId) -> Fut<'a, Vec<Credential>> {
        done(self.db.credentials_of(device))
    }
    fn get_credential<'a>(
        &'a self,
        device: DeviceId,
        id: CredentialId,
    ) -> Fut<'a, Option<Credential>> {
        done(self.db.get_credential(device, id))
    }
    fn find_credential<'a>(&'a self, key: CredentialKey<'a>) -> Fut<'a, Option<Credential>> {
        done(self.db.find_credential(key))
    }
    fn scan_credentials<'a>(
        &'a self,
        keep: &'a (dyn Fn(&Credential) -> bool + Sync),
    ) -> Fut<'a, Vec<Credential>> {
        done(self.db.scan_credentials(keep))
    }
    fn put_provisioning<'a>(
        &'a self,
        p: &'a FleetProvisioning,
        old_key: Option<&'a str>,
    ) -> Fut<'a, std::result::Result<(), NameClash>> {
        done(self.db.put_provisioning(p, old_key))
    }
    fn provisioning_of<'a>(&'a self, fleet: FleetId) -> Fut<'a, Option<FleetProvisioning>> {
        done(self.db.provisioning_of(fleet))
    }
    fn provisioning_by_key<'a>(&'a self, key: &'a str) -> Fut<'a, Option<FleetProvisioning>> {
        done(self.db.provisioning_by_key(key))
    }
    fn delete_provisioning<'a>(&'a self, fleet: FleetId) -> Fut<'a, ()> {
        done(self.db.delete_provisioning(fleet))
    }
    fn put_fleet_ca<'a>(&'a self, ca: &'a FleetCa) -> Fut<'a, ()> {
        done(self.db.put_fleet_ca(ca))
    }
    fn fleet_cas<'a>(&'a self, fleet: Option<FleetId>) -> Fut<'a, Vec<FleetCa>> {
        done(self.db.fleet_cas(fleet))
    }
    fn delete_fleet_ca<'a>(&'a self, fleet: FleetId, id: FleetCaId) -> Fut<'a, bool> {
        done(self.db.delete_fleet_ca(fleet, id))
    }
}

impl AttributeStore for Store {
    fn put_attributes<'a>(
        &'a self,
        owner: AttributeOwner,
        scope: Scope,
        values: &'a [(String, Value)],
        ts: Millis,
    ) -> Fut<'a, ()> {
        done(self.db.put_attributes(owner, scope, values, ts))
    }
    fn delete_attributes<'a>(
        &'a self,
        owner: AttributeOwner,
        scope: Scope,
        names: &'a [String],
    ) -> Fut<'a, Vec<String>> {
        done(self.db.delete_attributes(owner, scope, names))
    }
    fn get_attributes<'a>(
        &'a self,
        owner: AttributeOwner,
        scope: Scope,
        names: Option<&'a [String]>,
    ) -> Fut<'a, Vec<(String, Millis, Value)>> {
        done(self.db.get_attributes(owner, scope, names))
    }
}

impl ConditionStore for Store {
    fn put_condition<'a>(&'a self, c: &'a Condition) -> Fut<'a, ()> {
        done(self.db.put_condition(c))
    }
    fn get_condition<'a>(&'a self, id: ConditionId) -> Fut<'a, Option<Condition>> {
        done(self.db.get_condition(id))
    }
    fn open_condition<'a>(&'a self, device: DeviceId, name: &'a str) -> Fut<'a, Option<Condition>> {
        done(self.db.open_condition(device, name))
    }
    fn conditions<'a>(
        &'a self,
        scan: ConditionScan,
        limit: usize,
        keep: &'a mut (dyn FnMut(&mut Condition) -> bool + Send),
    ) -> Fut<'a, (Vec<Condition>, Option<Cursor>)> {
        done(self.db.conditions(scan, limit, keep))
    }
    fn open_condition_devices<'a>(&'a self) -> Fut<'a, Vec<DeviceId>> {
        done(self.db.open_condition_devices())
    }
    fn trim_closed_conditions<'a>(&'a self, device: DeviceId) -> Fut<'a, ()> {
        done(self.db.trim_closed_conditions(device))
    }
}

impl JobWriter for JobWrites<'_> {
    fn put_job(&mut self, job: &Job) {
        JobWrites::put_job(self, job)
    }
    fn add_fleet_job_child(&mut self, fj: FleetJobId, job: JobId) {
        JobWrites::add_fleet_job_child(self, fj, job)
    }
    fn put_fleet_job(&mut self, fj: &FleetJob) {
        JobWrites::put_fleet_job(self, fj)
    }
    fn next_rpc_id(&mut self, device: DeviceId) -> Result<u32> {
        JobWrites::next_rpc_id(self, device)
    }
    fn delete_device_jobs(&mut self, device: DeviceId) -> Result<()> {
        JobWrites::delete_device_jobs(self, device)
    }
}

impl JobStore for Store {
    fn write_logged_dyn(
        &self,
        f: &mut dyn FnMut(&mut dyn JobWriter) -> Result<()>,
    ) -> Result<Mark> {
        Ok(Store::write_logged(self, |w| f(w))?.1)
    }
    fn logged_mark(&self) -> Mark {
        Store::logged_mark(self)
    }
    fn durable(&self, mark: Mark) -> BoxFuture<'_, Result<()>> {
        Store::durable(self, mark).boxed()
    }
    fn get_job<'a>(&'a self, id: JobId) -> Fut<'a, Option<Job>> {
        done(self.db.get_job(id))
    }
    fn device_jobs<'a>(&'a self, device: DeviceId, active_only: bool) -> Fut<'a, Vec<Job>> {
        done(self.db.device_jobs(device, active_only))
    }
    fn active_jobs<'a>(&'a self) -> Fut<'a, Vec<(JobId, DeviceId)>> {
        done(self.db.active_jobs())
    }
    fn job_by_key<'a>(&'a self, device: DeviceId, key: &'a str) -> Fut<'a, Option<Job>> {
        done(self.db.job_by_key(device, key))
    }
    fn fleet_job_by_key<'a>(&'a self, fleet: FleetId, key: &'a str) -> Fut<'a, Option<FleetJob>> {
        done(self.db.fleet_job_by_key(fleet, key))
    }
    fn get_fleet_job<'a>(&'a self, id: FleetJobId) -> Fut<'a, Option<FleetJob>> {
        done(self.db.get_fleet_job(id))
    }
    fn fleet_jobs<'a>(&'a self) -> Fut<'a, Vec<FleetJob>> {
        done(self.db.fleet_jobs())
    }
    fn fleet_job_children<'a>(&'a self, fj: FleetJobId) -> Fut<'a, Vec<Job>> {
        done(self.db.fleet_job_children(fj))
    }
    fn put_schedule<'a>(&'a self, s: &'a Schedule) -> Fut<'a, ()> {
        done(self.db.put_schedule(s))
    }
    fn get_schedule<'a>(&'a self, id: ScheduleId) -> Fut<'a, Option<Schedule>> {
        done(self.db.get_schedule(id))
    }
    fn schedules<'a>(&'a self) -> Fut<'a, Vec<Schedule>> {
        done(self.db.schedules())
    }
    fn delete_schedule<'a>(&'a self, id: ScheduleId) -> Fut<'a, bool> {
        done(self.db.delete_schedule(id))
    }
}

impl IntegrationStore for Store {
    fn put_integration<'a>(&'a self, i: &'a Integration) -> Fut<'a, ()> {
        done(self.db.put_integration(i))
    }
    fn get_integration<'a>(&'a self, id: IntegrationId) -> Fut<'a, Option<Integration>> {
        done(self.db.get_integration(id))
    }
    fn list_integrations<'a>(&'a self) -> Fut<'a, Vec<Integration>> {
        done(self.db.list_integrations())
    }
    fn delete_integration(&self, id: IntegrationId) -> BoxFuture<'_, Result<()>> {
        Store::delete_integration(self, id).boxed()
    }
    fn enqueue_later(&self, q: Enqueue) {
        Store::enqueue_later(self, q)
    }
    fn queue_stats(&self, id: IntegrationId) -> Option<std::sync::Arc<QueueStats>> {
        self.db.queue_stats(id)
    }
    fn queue_head<'a>(&'a self, id: IntegrationId, max: usize) -> Fut<'a, Vec<QueueEntry>> {
        done(self.db.queue_head(id, max))
    }
    fn queue_oldest<'a>(&'a self, id: IntegrationId) -> Fut<'a, Option<Millis>> {
        done(self.db.queue_oldest(id))
    }
    fn queue_remove<'a>(&'a self, id: IntegrationId, seqs: &'a [u64]) -> Fut<'a, Moved> {
        done(self.db.queue_remove(id, seqs))
    }
    fn queue_drop_oldest<'a>(
        &'a self,
        id: IntegrationId,
        max_bytes: u64,
        min_enqueued_at: Millis,
    ) -> Fut<'a, Moved> {
        done(self.db.queue_drop_oldest(id, max_bytes, min_enqueued_at))
    }
    fn dead_letter<'a>(
        &'a self,
        id: IntegrationId,
        entries: &'a [QueueEntry],
        reason: &'a str,
        dead_max: u64,
    ) -> Fut<'a, u64> {
        done(self.db.dead_letter(id, entries, reason, dead_max))
    }
    fn dead_letters<'a>(
        &'a self,
        id: IntegrationId,
        after: Option<&'a Cursor>,
        limit: usize,
    ) -> Fut<'a, Page<DeadLetter>> {
        done(self.db.dead_letters(id, after, limit))
    }
    fn requeue_dead(&self, id: IntegrationId) -> BoxFuture<'_, Result<Moved>> {
        Store::requeue_dead(self, id).boxed()
    }
    fn dead_delete<'a>(&'a self, id: IntegrationId) -> Fut<'a, u64> {
        done(self.db.dead_delete(id))
    }
}

impl OperatorStore for Store {
    fn put_user<'a>(
        &'a self,
        user: &'a User,
        old_name: Option<&'a str>,
    ) -> Fut<'a, std::result::Result<(), NameClash>> {
        done(self.db.put_user(user, old_name))
    }
    fn get_user<'a>(&'a self, id: UserId) -> Fut<'a, Option<User>> {
        done(self.db.get_user(id))
    }
    fn user_by_name<'a>(&'a self, name: &'a str) -> Fut<'a, Option<User>> {
        done(self.db.user_by_name(name))
    }
    fn users<'a>(&'a self) -> Fut<'a, Vec<User>> {
        done(self.db.users())
    }
    fn user_count<'a>(&'a self) -> Fut<'a, usize> {
        done(self.db.user_count())
    }
    fn delete_user<'a>(&'a self, user: &'a User) -> Fut<'a, ()> {
        done(self.db.delete_user(user))
    }
    fn put_session<'a>(&'a self, hash: &'a [u8; 32], s: &'a UserSession) -> Fut<'a, ()> {
        done(self.db.put_session(hash, s))
    }
    fn get_session<'a>(&'a self, hash: &'a [u8; 32]) -> Fut<'a, Option<UserSession>> {
        done(self.db.get_session(hash))
    }
    fn delete_session<'a>(&'a self, hash: &'a [u8; 32]) -> Fut<'a, ()> {
        done(self.db.delete_session(hash))
    }
    fn delete_user_sessions<'a>(&'a self, user: UserId) -> Fut<'a, usize> {
        done(self.db.delete_user_sessions(user))
    }
    fn sweep_sessions<'a>(
        &'a self,
        expired: &'a (dyn Fn(&UserSession) -> bool + Sync),
    ) -> Fut<'a, usize> {
        done(self.db.sweep_sessions(expired))
    }
    fn put_api_key<'a>(&'a self, key: &'a ApiKey) -> Fut<'a, ()> {
        done(self.db.put_api_key(key))
    }
    fn api_key_by_hash<'a>(&'a self, sha256: &'a [u8; 32]) -> Fut<'a, Option<ApiKey>> {
        done(self.db.api_key_by_hash(sha256))
    }
    fn api_key_count<'a>(&'a self) -> Fut<'a, usize> {
        done(self.db.api_key_count())
    }
    fn api_keys<'a>(&'a self) -> Fut<'a, Vec<ApiKey>> {
        done(self.db.api_keys())
    }
    fn user_api_keys<'a>(&'a self, user: UserId) -> Fut<'a, Vec<ApiKey>> {
        done(self.db.user_api_keys(user))
    }
    fn delete_api_key<'a>(&'a self, id: ApiKeyId) -> Fut<'a, bool> {
        done(self.db.delete_api_key(id))
    }
    fn append_audit_later(&self, ev: AuditEvent, trim_to: Option<usize>) {
        self.apply_later(move |db| {
            if let Err(e) = db.append_audit(&ev) {
                tracing::error!(error = %e, "cannot write an audit record");
            }
            if let Some(max) = trim_to
                && let Err(e) = db.trim_audit(max)
            {
                tracing::warn!(error = %e, "cannot trim the audit log");
            }
        });
    }
    fn list_audit<'a>(
        &'a self,
        before: Option<&'a Cursor>,
        limit: usize,
        keep: &'a (dyn Fn(&AuditEvent) -> bool + Sync),
    ) -> Fut<'a, Page<AuditEvent>> {
        done(self.db.list_audit(before, limit, keep))
    }
}

impl TelemetryStore for Store {
    fn append_points(
        &self,
        op: PointsOp,
        queue: Option<Enqueue>,
        durable: bool,
    ) -> BoxFuture<'_, Result<usize>> {
        self.append_points_queued(op, queue, durable).boxed()
    }
    fn latest<'a>(
        &'a self,
        device: DeviceId,
        tag: &'a str,
        keys: Option<&'a [String]>,
    ) -> Fut<'a, Vec<(String, Point)>> {
        done(self.db.latest(device, tag, keys))
    }
    fn raw<'a>(&'a self, device: DeviceId, q: &'a RawQuery) -> Fut<'a, RawPage> {
        done(self.db.raw(device, q))
    }
    fn aggregate<'a>(
        &'a self,
        device: DeviceId,
        tag: &'a str,
        key: &'a str,
        bounds: &'a [Millis],
        from: Millis,
        to: Millis,
    ) -> Fut<'a, Vec<Agg>> {
        done(self.db.aggregate(device, tag, key, bounds, from, to))
    }
    fn scan_series(
        &self,
        device: DeviceId,
        tag: &str,
        key: &str,
        from: Millis,
        to: Millis,
    ) -> futures_util::stream::BoxStream<'static, Result<(Millis, Value)>> {
        // sled reads lazily as the stream is polled; each step is a local read.
        Box::pin(futures_util::stream::iter(
            self.db.scan_series(device, tag, key, from, to),
        ))
    }
    fn device_series<'a>(&'a self, device: DeviceId) -> Fut<'a, Vec<SeriesKey>> {
        done(self.db.device_series(device))
    }
    fn tag_keys<'a>(&'a self, device: DeviceId, tag: &'a str) -> Fut<'a, Vec<String>> {
        done(self.db.tag_keys(device, tag))
    }
    fn has_series<'a>(&'a self, device: DeviceId, tag: &'a str, key: &'a str) -> Fut<'a, bool> {
        done(self.db.has_series(device, tag, key))
    }
    fn series_count(&self, device: DeviceId) -> usize {
        self.db.series_count(device)
    }
    fn series_points<'a>(&'a self, device: DeviceId, tag: &'a str, key: &'a str) -> Fut<'a, u64> {
        done(self.db.series_points(device, tag, key))
    }
    fn series_is_empty<'a>(
        &'a self,
        device: DeviceId,
        tag: &'a str,
        key: &'a str,
    ) -> Fut<'a, bool> {
        done(self.db.series_is_empty(device, tag, key))
    }
    fn delete_series_before<'a>(
        &'a self,
        device: DeviceId,
        tag: &'a str,
        key: &'a str,
        cutoff: Millis,
    ) -> Fut<'a, u64> {
        done(self.db.delete_series_before(device, tag, key, cutoff))
    }
    fn forget_series_if_empty(&self, device: DeviceId, tag: &str, key: &str) {
        Store::forget_series_if_empty(self, device, tag, key)
    }
    fn footprint(&self) -> Fut<'_, StoreFootprint> {
        done(self.footprint_now())
    }
}

impl Store {
    fn footprint_now(&self) -> Result<StoreFootprint> {
        let wal = self.db.path().with_extension("wal");
        let wal_bytes = std::fs::read_dir(&wal)
            .map(|d| {
                d.filter_map(std::result::Result::ok)
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        Ok(StoreFootprint {
            store_bytes: self.db.size_on_disk()?,
            wal_bytes,
            schema_version: self.db.schema_version()?,
        })
    }
}

impl BackupStore for Store {
    fn backup(
        &self,
        extras: Vec<super::backup::Extra>,
        out: Box<dyn std::io::Write + Send>,
    ) -> BoxFuture<'_, std::result::Result<super::backup::Manifest, super::backup::BackupError>>
    {
        Store::backup(self, extras, out).boxed()
    }
    fn size_on_disk(&self) -> Fut<'_, u64> {
        done(self.db.size_on_disk())
    }
}

/// A port's answer computed at the call: sled answers from its cache or a local read, so the
/// future is ready at once.
fn done<'a, T: Send + 'a>(r: Result<T>) -> Fut<'a, T> {
    Box::pin(std::future::ready(r))
}

impl PackageStore for Store {
    fn add_package<'a>(
        &'a self,
        p: &'a crate::model::Package,
    ) -> Fut<'a, std::result::Result<(), NameClash>> {
        done(self.db.add_package(p))
    }
    fn update_package<'a>(&'a self, p: &'a crate::model::Package) -> Fut<'a, ()> {
        done(self.db.update_package(p))
    }
    fn get_package<'a>(
        &'a self,
        id: crate::model::PackageId,
    ) -> Fut<'a, Option<crate::model::Package>> {
        done(self.db.get_package(id))
    }
    fn package_by_version<'a>(
        &'a self,
        kind: crate::model::PackageKind,
        title: &'a str,
        version: &'a str,
    ) -> Fut<'a, Option<crate::model::Package>> {
        done(self.db.package_by_version(kind, title, version))
    }
    fn packages<'a>(&'a self) -> Fut<'a, Vec<crate::model::Package>> {
        done(self.db.packages())
    }
    fn delete_package<'a>(&'a self, p: &'a crate::model::Package) -> Fut<'a, ()> {
        done(self.db.delete_package(p))
    }
}

impl DashboardStore for Store {
    fn put_dashboard<'a>(&'a self, d: &'a crate::model::Dashboard) -> Fut<'a, ()> {
        done(self.db.put_dashboard(d))
    }
    fn get_dashboard<'a>(
        &'a self,
        id: crate::model::DashboardId,
    ) -> Fut<'a, Option<crate::model::Dashboard>> {
        done(self.db.get_dashboard(id))
    }
    fn dashboards<'a>(&'a self) -> Fut<'a, Vec<crate::model::Dashboard>> {
        done(self.db.dashboards())
    }
    fn delete_dashboard<'a>(&'a self, id: crate::model::DashboardId) -> Fut<'a, bool> {
        done(self.db.delete_dashboard(id))
    }
}

impl CampaignStore for Store {
    fn put_campaign<'a>(&'a self, c: &'a crate::model::Campaign) -> Fut<'a, ()> {
        done(self.db.put_campaign(c))
    }
    fn get_campaign<'a>(
        &'a self,
        id: crate::model::CampaignId,
    ) -> Fut<'a, Option<crate::model::Campaign>> {
        done(self.db.get_campaign(id))
    }
    fn campaigns<'a>(&'a self) -> Fut<'a, Vec<crate::model::Campaign>> {
        done(self.db.campaigns())
    }
    fn delete_campaign<'a>(&'a self, id: crate::model::CampaignId) -> Fut<'a, ()> {
        done(self.db.delete_campaign(id))
    }
    fn put_device_updates<'a>(&'a self, u: &'a [crate::model::DeviceUpdate]) -> Fut<'a, ()> {
        done(self.db.put_device_updates(u))
    }
    fn device_updates<'a>(
        &'a self,
        id: crate::model::CampaignId,
    ) -> Fut<'a, Vec<crate::model::DeviceUpdate>> {
        done(self.db.device_updates(id))
    }
    fn device_update<'a>(
        &'a self,
        c: crate::model::CampaignId,
        d: crate::model::DeviceId,
    ) -> Fut<'a, Option<crate::model::DeviceUpdate>> {
        done(self.db.device_update(c, d))
    }
}
