//! The sled engine behind every storage port (`ports`): each trait implemented once, over
//! the typed operations of `Db` (in the per-area files beside this one) and the write
//! pipeline. Nothing here decides anything; it maps a port's call onto the engine.

use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use super::ports::{
    AttributeStore, BackupStore, ConditionStore, Durable, IdentityStore, IntegrationStore,
    JobStore, JobWriter, OperatorStore, Ports, RegistryStore, StoreFootprint, TelemetryStore,
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
    fn put_workspace(
        &self,
        ws: &Workspace,
        old_name: Option<&str>,
    ) -> Result<std::result::Result<(), NameClash>> {
        self.db.put_workspace(ws, old_name)
    }
    fn get_workspace(&self, id: WorkspaceId) -> Result<Option<Workspace>> {
        self.db.get_workspace(id)
    }
    fn list_workspaces(
        &self,
        after: Option<&Cursor>,
        limit: usize,
        keep: &dyn Fn(&Workspace) -> bool,
    ) -> Result<Page<Workspace>> {
        self.db.list_workspaces(after, limit, keep)
    }
    fn delete_workspace(&self, ws: &Workspace) -> Result<bool> {
        self.db.delete_workspace(ws)
    }
    fn put_fleet(
        &self,
        fleet: &Fleet,
        old_name: Option<&str>,
    ) -> Result<std::result::Result<(), NameClash>> {
        self.db.put_fleet(fleet, old_name)
    }
    fn get_fleet(&self, id: FleetId) -> Result<Option<Fleet>> {
        self.db.get_fleet(id)
    }
    fn list_fleets(
        &self,
        after: Option<&Cursor>,
        limit: usize,
        keep: &dyn Fn(&Fleet) -> bool,
    ) -> Result<Page<Fleet>> {
        self.db.list_fleets(after, limit, keep)
    }
    fn delete_fleet(&self, fleet: &Fleet) -> Result<bool> {
        if !self.db.delete_fleet(fleet)? {
            return Ok(false);
        }
        self.db.delete_provisioning(fleet.id)?;
        self.db
            .delete_owner_attributes(AttributeOwner::Fleet(fleet.id))?;
        Ok(true)
    }
    fn create_device(
        &self,
        dev: &Device,
        creds: &[Credential],
    ) -> Result<std::result::Result<(), DeviceClash>> {
        self.db.create_device(dev, creds)
    }
    fn update_device(
        &self,
        dev: &Device,
        old: &Device,
    ) -> Result<std::result::Result<(), NameClash>> {
        self.db.update_device(dev, old)
    }
    fn get_device(&self, id: DeviceId) -> Result<Option<Device>> {
        self.db.get_device(id)
    }
    fn update_device_record(&self, id: DeviceId, update: &dyn Fn(&mut Device)) -> Result<()> {
        self.db.update_device_record(id, update)
    }
    fn device_by_name(&self, ws: WorkspaceId, name: &str) -> Result<Option<Device>> {
        self.db.device_by_name(ws, name)
    }
    fn list_devices(
        &self,
        fleet: Option<FleetId>,
        after: Option<&Cursor>,
        limit: usize,
        keep: &dyn Fn(&Device) -> bool,
    ) -> Result<Page<Device>> {
        self.db.list_devices(fleet, after, limit, keep)
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
    fn connections(&self, device: DeviceId) -> Result<Vec<ConnectionEvent>> {
        self.db.connections(device)
    }
}

impl IdentityStore for Store {
    fn add_credential(
        &self,
        cred: &Credential,
    ) -> Result<std::result::Result<(), CredentialClash>> {
        self.db.add_credential(cred)
    }
    fn update_credential(&self, cred: &Credential) -> Result<()> {
        self.db.update_credential(cred)
    }
    fn delete_credential(&self, cred: &Credential) -> Result<()> {
        self.db.delete_credential(cred)
    }
    fn credentials_of(&self, device: DeviceId) -> Result<Vec<Credential>> {
        self.db.credentials_of(device)
    }
    fn get_credential(&self, device: DeviceId, id: CredentialId) -> Result<Option<Credential>> {
        self.db.get_credential(device, id)
    }
    fn find_credential(&self, key: CredentialKey<'_>) -> Result<Option<Credential>> {
        self.db.find_credential(key)
    }
    fn scan_credentials(&self, keep: &dyn Fn(&Credential) -> bool) -> Result<Vec<Credential>> {
        self.db.scan_credentials(keep)
    }
    fn put_provisioning(
        &self,
        p: &FleetProvisioning,
        old_key: Option<&str>,
    ) -> Result<std::result::Result<(), NameClash>> {
        self.db.put_provisioning(p, old_key)
    }
    fn provisioning_of(&self, fleet: FleetId) -> Result<Option<FleetProvisioning>> {
        self.db.provisioning_of(fleet)
    }
    fn provisioning_by_key(&self, key: &str) -> Result<Option<FleetProvisioning>> {
        self.db.provisioning_by_key(key)
    }
    fn delete_provisioning(&self, fleet: FleetId) -> Result<()> {
        self.db.delete_provisioning(fleet)
    }
    fn put_fleet_ca(&self, ca: &FleetCa) -> Result<()> {
        self.db.put_fleet_ca(ca)
    }
    fn fleet_cas(&self, fleet: Option<FleetId>) -> Result<Vec<FleetCa>> {
        self.db.fleet_cas(fleet)
    }
    fn delete_fleet_ca(&self, fleet: FleetId, id: FleetCaId) -> Result<bool> {
        self.db.delete_fleet_ca(fleet, id)
    }
}

impl AttributeStore for Store {
    fn put_attributes(
        &self,
        owner: AttributeOwner,
        scope: Scope,
        values: &[(String, Value)],
        ts: Millis,
    ) -> Result<()> {
        self.db.put_attributes(owner, scope, values, ts)
    }
    fn delete_attributes(
        &self,
        owner: AttributeOwner,
        scope: Scope,
        names: &[String],
    ) -> Result<Vec<String>> {
        self.db.delete_attributes(owner, scope, names)
    }
    fn get_attributes(
        &self,
        owner: AttributeOwner,
        scope: Scope,
        names: Option<&[String]>,
    ) -> Result<Vec<(String, Millis, Value)>> {
        self.db.get_attributes(owner, scope, names)
    }
}

impl ConditionStore for Store {
    fn put_condition(&self, c: &Condition) -> Result<()> {
        self.db.put_condition(c)
    }
    fn get_condition(&self, id: ConditionId) -> Result<Option<Condition>> {
        self.db.get_condition(id)
    }
    fn open_condition(&self, device: DeviceId, name: &str) -> Result<Option<Condition>> {
        self.db.open_condition(device, name)
    }
    fn conditions(
        &self,
        scan: ConditionScan,
        limit: usize,
        keep: &mut dyn FnMut(&mut Condition) -> bool,
    ) -> Result<(Vec<Condition>, Option<Cursor>)> {
        self.db.conditions(scan, limit, keep)
    }
    fn open_condition_devices(&self) -> Result<Vec<DeviceId>> {
        self.db.open_condition_devices()
    }
    fn trim_closed_conditions(&self, device: DeviceId) -> Result<()> {
        self.db.trim_closed_conditions(device)
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
    fn get_job(&self, id: JobId) -> Result<Option<Job>> {
        self.db.get_job(id)
    }
    fn device_jobs(&self, device: DeviceId, active_only: bool) -> Result<Vec<Job>> {
        self.db.device_jobs(device, active_only)
    }
    fn active_jobs(&self) -> Result<Vec<(JobId, DeviceId)>> {
        self.db.active_jobs()
    }
    fn job_by_key(&self, device: DeviceId, key: &str) -> Result<Option<Job>> {
        self.db.job_by_key(device, key)
    }
    fn fleet_job_by_key(&self, fleet: FleetId, key: &str) -> Result<Option<FleetJob>> {
        self.db.fleet_job_by_key(fleet, key)
    }
    fn get_fleet_job(&self, id: FleetJobId) -> Result<Option<FleetJob>> {
        self.db.get_fleet_job(id)
    }
    fn fleet_jobs(&self) -> Result<Vec<FleetJob>> {
        self.db.fleet_jobs()
    }
    fn fleet_job_children(&self, fj: FleetJobId) -> Result<Vec<Job>> {
        self.db.fleet_job_children(fj)
    }
    fn put_schedule(&self, s: &Schedule) -> Result<()> {
        self.db.put_schedule(s)
    }
    fn get_schedule(&self, id: ScheduleId) -> Result<Option<Schedule>> {
        self.db.get_schedule(id)
    }
    fn schedules(&self) -> Result<Vec<Schedule>> {
        self.db.schedules()
    }
    fn delete_schedule(&self, id: ScheduleId) -> Result<bool> {
        self.db.delete_schedule(id)
    }
}

impl IntegrationStore for Store {
    fn put_integration(&self, i: &Integration) -> Result<()> {
        self.db.put_integration(i)
    }
    fn get_integration(&self, id: IntegrationId) -> Result<Option<Integration>> {
        self.db.get_integration(id)
    }
    fn list_integrations(&self) -> Result<Vec<Integration>> {
        self.db.list_integrations()
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
    fn queue_head(&self, id: IntegrationId, max: usize) -> Result<Vec<QueueEntry>> {
        self.db.queue_head(id, max)
    }
    fn queue_oldest(&self, id: IntegrationId) -> Result<Option<Millis>> {
        self.db.queue_oldest(id)
    }
    fn queue_remove(&self, id: IntegrationId, seqs: &[u64]) -> Result<Moved> {
        self.db.queue_remove(id, seqs)
    }
    fn queue_drop_oldest(
        &self,
        id: IntegrationId,
        max_bytes: u64,
        min_enqueued_at: Millis,
    ) -> Result<Moved> {
        self.db.queue_drop_oldest(id, max_bytes, min_enqueued_at)
    }
    fn dead_letter(
        &self,
        id: IntegrationId,
        entries: &[QueueEntry],
        reason: &str,
        dead_max: u64,
    ) -> Result<u64> {
        self.db.dead_letter(id, entries, reason, dead_max)
    }
    fn dead_letters(
        &self,
        id: IntegrationId,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Page<DeadLetter>> {
        self.db.dead_letters(id, after, limit)
    }
    fn requeue_dead(&self, id: IntegrationId) -> BoxFuture<'_, Result<Moved>> {
        Store::requeue_dead(self, id).boxed()
    }
    fn dead_delete(&self, id: IntegrationId) -> Result<u64> {
        self.db.dead_delete(id)
    }
}

impl OperatorStore for Store {
    fn put_user(
        &self,
        user: &User,
        old_name: Option<&str>,
    ) -> Result<std::result::Result<(), NameClash>> {
        self.db.put_user(user, old_name)
    }
    fn get_user(&self, id: UserId) -> Result<Option<User>> {
        self.db.get_user(id)
    }
    fn user_by_name(&self, name: &str) -> Result<Option<User>> {
        self.db.user_by_name(name)
    }
    fn users(&self) -> Result<Vec<User>> {
        self.db.users()
    }
    fn user_count(&self) -> Result<usize> {
        self.db.user_count()
    }
    fn delete_user(&self, user: &User) -> Result<()> {
        self.db.delete_user(user)
    }
    fn put_session(&self, hash: &[u8; 32], s: &UserSession) -> Result<()> {
        self.db.put_session(hash, s)
    }
    fn get_session(&self, hash: &[u8; 32]) -> Result<Option<UserSession>> {
        self.db.get_session(hash)
    }
    fn delete_session(&self, hash: &[u8; 32]) -> Result<()> {
        self.db.delete_session(hash)
    }
    fn delete_user_sessions(&self, user: UserId) -> Result<usize> {
        self.db.delete_user_sessions(user)
    }
    fn sweep_sessions(&self, expired: &dyn Fn(&UserSession) -> bool) -> Result<usize> {
        self.db.sweep_sessions(expired)
    }
    fn put_api_key(&self, key: &ApiKey) -> Result<()> {
        self.db.put_api_key(key)
    }
    fn api_key_by_hash(&self, sha256: &[u8; 32]) -> Result<Option<ApiKey>> {
        self.db.api_key_by_hash(sha256)
    }
    fn api_key_count(&self) -> Result<usize> {
        self.db.api_key_count()
    }
    fn api_keys(&self) -> Result<Vec<ApiKey>> {
        self.db.api_keys()
    }
    fn user_api_keys(&self, user: UserId) -> Result<Vec<ApiKey>> {
        self.db.user_api_keys(user)
    }
    fn delete_api_key(&self, id: ApiKeyId) -> Result<bool> {
        self.db.delete_api_key(id)
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
    fn list_audit(
        &self,
        before: Option<&Cursor>,
        limit: usize,
        keep: &dyn Fn(&AuditEvent) -> bool,
    ) -> Result<Page<AuditEvent>> {
        self.db.list_audit(before, limit, keep)
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
    fn latest(
        &self,
        device: DeviceId,
        tag: &str,
        keys: Option<&[String]>,
    ) -> Result<Vec<(String, Point)>> {
        self.db.latest(device, tag, keys)
    }
    fn raw(&self, device: DeviceId, q: &RawQuery) -> Result<RawPage> {
        self.db.raw(device, q)
    }
    fn aggregate(
        &self,
        device: DeviceId,
        tag: &str,
        key: &str,
        bounds: &[Millis],
        from: Millis,
        to: Millis,
    ) -> Result<Vec<Agg>> {
        self.db.aggregate(device, tag, key, bounds, from, to)
    }
    fn scan_series(
        &self,
        device: DeviceId,
        tag: &str,
        key: &str,
        from: Millis,
        to: Millis,
    ) -> Box<dyn Iterator<Item = Result<(Millis, Value)>> + Send> {
        Box::new(self.db.scan_series(device, tag, key, from, to))
    }
    fn device_series(&self, device: DeviceId) -> Result<Vec<SeriesKey>> {
        self.db.device_series(device)
    }
    fn tag_keys(&self, device: DeviceId, tag: &str) -> Result<Vec<String>> {
        self.db.tag_keys(device, tag)
    }
    fn has_series(&self, device: DeviceId, tag: &str, key: &str) -> Result<bool> {
        self.db.has_series(device, tag, key)
    }
    fn series_count(&self, device: DeviceId) -> usize {
        self.db.series_count(device)
    }
    fn series_points(&self, device: DeviceId, tag: &str, key: &str) -> Result<u64> {
        self.db.series_points(device, tag, key)
    }
    fn series_is_empty(&self, device: DeviceId, tag: &str, key: &str) -> Result<bool> {
        self.db.series_is_empty(device, tag, key)
    }
    fn delete_series_before(
        &self,
        device: DeviceId,
        tag: &str,
        key: &str,
        cutoff: Millis,
    ) -> Result<u64> {
        self.db.delete_series_before(device, tag, key, cutoff)
    }
    fn forget_series_if_empty(&self, device: DeviceId, tag: &str, key: &str) {
        Store::forget_series_if_empty(self, device, tag, key)
    }
    fn footprint(&self) -> Result<StoreFootprint> {
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
    fn size_on_disk(&self) -> Result<u64> {
        self.db.size_on_disk()
    }
}
