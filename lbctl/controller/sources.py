"""What a member's replica mounts from the host: bind sources and named volumes, judged when
a change is asked for and again before every replica is created.

A bind source is the host's file system as it is when the engine mounts it, not when the
request was judged: a member who can write any directory on the way could swap the judged
directory for a symlink to `/` after the app was accepted, and the next replacement replica
would mount the host's root. So a member's bind source is refused when any component of it
is a symlink, is missing (the engine would create it, as root), is not a directory or a
regular file, or is one the member could change: owned by them, writable by everyone
(sticky directories too: a name that is free can be taken), writable by a group they are in
(or carrying an ACL, which may grant them more than the group bits show). A path nobody but
root can change stays what was judged, and every create judges it again, in the engine's
own mount namespace (lbctl.runtime.hostfiles), as the owner of the app (the member whose
change last set its template: controller.store.AppRecord.owner).

A named volume is a member's only when lbctl created it for them (labelled `lbctl.owner=UID`,
by an apply of theirs or for an app of theirs that named a missing one), and never one with
driver options: a local volume created `-o type=none -o o=bind -o device=/etc` is a bind
mount of /etc under another name. Root's data volumes, compose projects' volumes and other
members' are theirs. A missing volume is created at commit, labelled for the member.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass

from lbctl.controller.interfaces import EnginePort, HostFiles
from lbctl.controller.policy import Policy
from lbctl.model import LABEL_OWNER, AppSpec, Forbidden
from lbctl.model.runtime import PathEntry, VolumeFacts

NOBODY = 65534  # a caller without credentials is judged as nobody, never as root


@dataclass(frozen=True)
class Who:
    """A member asking: their uid and the groups the user database gives them (None: not
    known, so every group-writable directory counts as theirs)."""

    uid: int
    gids: frozenset[int] | None = None

    @classmethod
    def of(cls, uid: int | None, gid: int | None = None) -> Who:
        """`uid` with their groups from the user database (and `gid`, the process's own)."""
        if uid is None:
            return cls(NOBODY, frozenset())
        try:
            pw = pwd.getpwuid(uid)
        except KeyError:
            return cls(uid, None)
        gids = set(os.getgrouplist(pw.pw_name, pw.pw_gid))
        if gid is not None:
            gids.add(gid)
        return cls(uid, frozenset(gids))


def judge_walk(source: str, entries: list[PathEntry], who: Who) -> str | None:
    """Why `who` may not bind-mount `source`, walked as `entries` (None: they may)."""
    for e in entries:
        if e.kind == "symlink":
            return f"{e.path} is a symlink (a member's bind source has none, anywhere)"
        if e.kind == "missing":
            return f"{e.path} does not exist (the engine would create it as root)"
        if e.kind == "other":
            return f"{e.path} is a device, socket or pipe, not a directory or file"
        why = _writable(e, who)
        if why:
            return f"{e.path} is {why}, so it could be swapped after it was judged"
    target = source.rstrip("/") or "/"
    if not entries or entries[-1].path != target:
        last = entries[-1].path if entries else source
        return f"{last} is a file, not a directory"
    return None


def _writable(e: PathEntry, who: Who) -> str | None:
    if e.uid == who.uid:
        return "the caller's own"
    if e.mode & 0o002:
        return "writable by everyone" + (" (sticky)" if e.mode & 0o1000 else "")
    if e.mode & 0o020:
        if who.gids is None or e.gid in who.gids:
            return f"writable by group {_group(e.gid)}, which the caller is in"
        if e.acl:
            return "writable through an ACL"
    return None


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def bind_sources(spec: AppSpec) -> list[str]:
    """The host paths an app's replicas bind-mount (-v /src:/dst, --mount type=bind)."""
    out = [v.source for v in spec.options.volumes() if v.bind and v.source is not None]
    out += [m.source for m in spec.options.mounts() if m.type == "bind" and m.source]
    return list(dict.fromkeys(out))


def named_volumes(spec: AppSpec) -> list[str]:
    """The named volumes an app's replicas mount (anonymous ones are each replica's own)."""
    out = [v.source for v in spec.options.volumes() if v.source and not v.bind]
    out += [m.source for m in spec.options.mounts() if m.type == "volume" and m.source]
    return list(dict.fromkeys(out))


class SourceGuard:
    """Judges what a member's replicas mount, with the engine's answers (volumes) and the
    host's files as the engine sees them (`files`)."""

    def __init__(self, engine: EnginePort, files: HostFiles) -> None:
        self.engine = engine
        self.files = files

    async def check(self, spec: AppSpec, who: Who, policy: Policy) -> list[str]:
        """Refuse (Forbidden) what `who` may not mount; return the named volumes that do not
        exist yet (lbctl creates them for `who` when the change is committed)."""
        reason = await self.binds(spec, who)
        if reason:
            raise Forbidden(f"policy: {reason} ({policy.rule('allowed_bind_sources')})")
        missing = []
        for name in named_volumes(spec):
            facts = await self.engine.volume(name)
            if facts is None:
                missing.append(name)
                continue
            why = volume_refusal(name, facts, who)
            if why:
                raise Forbidden(f"policy: {why}")
        return missing

    async def recheck(self, spec: AppSpec, owner: int) -> str | None:
        """Before a replica of a member's app is created: why it may not be (None: it may).
        A volume missing now is one the engine creates empty, which is harmless."""
        who = Who.of(owner)
        reason = await self.binds(spec, who)
        if reason:
            return reason
        for name in named_volumes(spec):
            facts = await self.engine.volume(name)
            if facts is not None:
                why = volume_refusal(name, facts, who)
                if why:
                    return why
        return None

    async def binds(self, spec: AppSpec, who: Who) -> str | None:
        for source in bind_sources(spec):
            try:
                entries = await self.files.walk(source)
            except OSError as e:
                return f"bind mount of {source} cannot be judged: {e}"
            why = judge_walk(source, entries, who)
            if why:
                return f"bind mount of {source}: {why}"
        return None


def volume_refusal(name: str, facts: VolumeFacts, who: Who) -> str | None:
    """Why `who` may not mount existing volume `name` (None: it is theirs and plain)."""
    if facts.labels.get(LABEL_OWNER) != str(who.uid):
        return (f"volume {name} is not the caller's (a member mounts only volumes lbctl "
                "created for them: name a new one, or declare it in the file they apply)")
    if facts.driver != "local" or facts.options:
        return (f"volume {name} has a driver or driver options (a local volume with o=bind "
                "or device= is a bind mount of a host path): root's alone")
    return None
