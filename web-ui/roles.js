// What the signed-in caller's role allows, to show only the controls that can work: server
// admins may do everything; a grant gives viewer < operator < admin on a workspace, optionally
// limited to some of its fleets (src/auth/policy.rs). This is a convenience only: the server
// checks every request, and the UI shows its refusal when it says no. When the roles are not
// known, every control is shown.

import { session } from './api.js';
import { h } from './dom.js';

const RANK = { viewer: 1, operator: 2, admin: 3 };

function best(grants) {
  let role = null;
  for (const g of grants) if (RANK[g.role] && (!role || RANK[g.role] > RANK[role])) role = g.role;
  return role;
}

/** The caller's role on a fleet: 'admin', 'operator', 'viewer' or null; undefined when unknown. */
export function roleOnFleet(workspaceId, fleetId) {
  const a = session.access;
  if (!a) return undefined;
  if (a.admin) return 'admin';
  return best(a.grants.filter((g) => g.workspace_id === workspaceId && (!g.fleets || g.fleets.includes(fleetId))));
}

/**
 * The caller's role on a workspace as a whole (its settings, every fleet): a grant limited to
 * some fleets gives none. Undefined when unknown.
 */
export function roleOnWorkspace(workspaceId) {
  const a = session.access;
  if (!a) return undefined;
  if (a.admin) return 'admin';
  return best(a.grants.filter((g) => g.workspace_id === workspaceId && !g.fleets));
}

/** Whether `role` (from the functions above) reaches `need`; an unknown role does. */
export function allows(role, need) {
  if (role === undefined) return true;
  return Boolean(role) && RANK[role] >= RANK[need];
}

export const canOnFleet = (workspaceId, fleetId, need) => allows(roleOnFleet(workspaceId, fleetId), need);
export const canOnWorkspace = (workspaceId, need) => allows(roleOnWorkspace(workspaceId), need);

/** Whether the caller is a server admin; true when unknown. */
export const serverAdmin = () => !session.access || session.access.admin;

/**
 * The note that replaces controls the caller's role does not allow:
 * `roleNote('operator', 'Sending commands')` → "Sending commands needs the operator role."
 * `scope` 'workspace' says the role must cover the whole workspace; 'server' names server
 * administrators.
 */
export function roleNote(need, what, scope) {
  const text = scope === 'server' ? `${what} is for server administrators.`
    : scope === 'workspace' ? `${what} needs the ${need} role on the whole workspace.`
      : `${what} needs the ${need} role.`;
  return h('p', { class: 'role-note', 'data-needs': scope === 'server' ? 'server-admin' : need }, text);
}

/** "Your role: operator" for a page header; null when unknown. */
export function roleText(role) {
  if (role === undefined) return null;
  if (session.access && session.access.admin) return 'server administrator';
  return role || 'none';
}
