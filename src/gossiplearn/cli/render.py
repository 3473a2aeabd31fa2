"""Human-readable rendering of a peer's status (``gossiplearn status``)."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, fmt: str = ".4f") -> str:
    return "—" if x is None else format(x, fmt)


def _ago(t: float | None, now: float) -> str:
    if t is None:
        return "never"
    s = max(0.0, now - t)
    return f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f}m ago"


def _duration(s: float) -> str:
    s = int(s)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s"


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _trend(delta: float | None, higher_is_better: bool) -> str:
    if delta is None or abs(delta) < 1e-4:
        return "→"
    up = delta > 0
    arrow = "↑" if up else "↓"
    good = up == higher_is_better
    return f"[{'green' if good else 'red'}]{arrow} {abs(delta):.4f}[/]"


def render_status(s: dict[str, Any]) -> Group:
    now = time.time()
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("peer", s["peer_id"])
    for i, addr in enumerate(s.get("addrs", [])):
        head.add_row("addrs" if i == 0 else "", addr)
    head.add_row("uptime", _duration(s.get("uptime", 0.0)))
    if s.get("task"):
        head.add_row("task", f"{s['task']} ({s.get('samples', 0)} local training samples)")
    if s.get("contract"):
        head.add_row("contract", s["contract"][:12])
    m = s["metrics"]
    trend = m.get("trend", {})
    if s.get("task_kind") == "regression":
        head.add_row(
            "fit",
            f"RMSE {_num(m.get('rmse'), '.4g')}, MAE {_num(m.get('mae'), '.4g')}, "
            f"R² {_num(m.get('r2'), '.3f')}  (local validation)",
        )
    else:
        head.add_row(
            "accuracy",
            f"{_pct(m.get('accuracy'))}  {_trend(trend.get('accuracy'), True)}  (local validation)",
        )
    head.add_row("loss", f"{_num(m.get('loss'))}  {_trend(trend.get('loss'), False)}")
    stats = s.get("statistics")
    if stats:
        head.add_row("statistics", _statistics_row(stats))
    cd = s.get("consensus_distance")
    cd10 = s.get("consensus_distance_mean10")
    head.add_row(
        "consensus", f"{_num(cd)} last, {_num(cd10)} mean of last 10 (‖ours−theirs‖/‖ours‖)"
    )
    t = s["training"]
    head.add_row(
        "training",
        f"{t['steps']} steps, {t['samples_seen']} samples"
        + (f"; model age {t['model_age']:.0f} examples" if t.get("model_age") is not None else "")
        + ("" if t.get("enabled", True) else " (training off: averaging only)"),
    )
    if s.get("privacy"):
        head.add_row("privacy", _privacy_row(s["privacy"]))
    e = s["exchanges"]
    refused = ", ".join(f"{k} {v}" for k, v in sorted(e.get("refused_by_reason", {}).items()))
    head.add_row(
        "exchanges",
        f"{e['completed']} completed, {e['declined']} declined, {e['failed']} failed, "
        f"{e['refused']} refused"
        + (f" ({refused})" if refused else "")
        + f"; we declined {e.get('declined_inbound', 0)} while busy",
    )
    group = e.get("group") or {}
    if group.get("enabled") or group.get("joined"):
        head.add_row("groups", _group_row(group))
    for item in s.get("incompatible") or []:
        who = item.get("name") or "…" + item["peer_id"][-12:]
        head.add_row("incompatible", f"[red]{who}: {item['detail']}[/]")
    if e.get("adopted") or e.get("seeded"):
        head.add_row(
            "late joiners",
            ("we adopted a neighbour's model on joining; " if e.get("adopted") else "")
            + f"{e.get('seeded', 0)} new peer(s) adopted ours",
        )
    head.add_row(
        "traffic", f"{_bytes(s['bytes_sent'])} sent, {_bytes(s['bytes_received'])} received"
    )
    cp = s.get("checkpoint")
    if cp:
        every = f"every {cp['interval']:g} s" if cp.get("interval") else "at shutdown only"
        last = (
            f"last {_ago(cp['time'], now)} ({cp['steps']} steps)" if cp.get("time") else "none yet"
        )
        resumed = cp.get("resumed")
        head.add_row(
            "checkpoint",
            f"{last}, {every}" + (f"; resumed from {resumed['steps']} steps" if resumed else ""),
        )
    for label, text in _security_rows(s.get("security") or {}, e, now):
        head.add_row(label, text)

    nb = Table(title=f"neighbours ({len(s['neighbours'])})", title_justify="left")
    for col in ("peer", "last exchange", "exchanges", "their accuracy", "distance", "state"):
        nb.add_column(col)
    for n in s["neighbours"]:
        pid = n["peer_id"]
        state = "connected" if n.get("connected") else "known"
        if n.get("failures"):
            state = f"{n['failures']} failures, retry in {n.get('backoff_s', 0):.0f}s"
        name = n.get("name")
        nb.add_row(
            f"{name} (…{pid[-6:]})" if name else f"…{pid[-12:]}",
            _ago(n.get("last_exchange"), now),
            str(n.get("exchanges", 0)),
            _pct(n.get("accuracy")),
            _num(n.get("consensus_distance")),
            state,
        )
    return Group(head, Text(""), nb)


def _statistics_row(stats: dict[str, Any]) -> str:
    """The consortium statistics in one line: a few columns' means and deviations."""
    parts = []
    for name, col in list((stats.get("columns") or {}).items())[:3]:
        if "mean" in col:
            parts.append(f"{name} {col['mean']:.4g}±{col['std']:.3g}")
    more = len(stats.get("columns") or {}) - len(parts)
    text = "consortium-wide (gossip): " + ", ".join(parts) + (f", +{more} columns" if more else "")
    target = stats.get("target")
    if target:
        text += f"; target {target['mean']:.4g}±{target['std']:.3g}"
    return text


def _privacy_row(p: dict[str, Any]) -> str:
    """Differential privacy in one line: ε spent of the budget, and the mechanism."""
    eps = p.get("epsilon")
    if not p.get("dp"):
        if not p.get("steps") or eps is None:
            return "off (no differential privacy)"
        since = p.get("plain_steps")
        return f"off; ε = {eps:.3g} was spent while it was on" + (
            f", {since} steps trained since without it" if since else ""
        )
    text = (
        f"DP-SGD, ε = {_num(eps, '.3g')} of {p['target_epsilon']:g} spent "
        f"(δ = {p['delta']:.2g}, {p['accountant']}); noise σ = {p['noise_multiplier']:.3g}, "
        f"clipping C = {p['max_grad_norm']:g}"
    )
    return text + ("; [yellow]budget spent: training stopped[/]" if p.get("budget_spent") else "")


def _group_row(g: dict[str, Any]) -> str:
    """Secure group rounds in one line: merged, led and joined, and the rounds that ended
    unmerged or were not started, by reason."""
    mode = f"groups of {g['size']}" if g.get("enabled") else "secure averaging off; invited"
    text = f"{g['completed']} merged ({mode}): {g['led']} led, {g['joined']} joined"
    if g.get("abandoned"):
        text += f"; abandoned: {_counts(g['abandoned'])}"
    if g.get("skipped"):
        text += f"; not started: {_counts(g['skipped'])}"
    return text


def render_evaluation(r: dict[str, Any]) -> Group:
    """``gossiplearn evaluate``'s report, for people."""
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("data", f"{r['data']} ({r['read']})")
    head.add_row("model", f"{r['model']} ({r['steps']} steps)")
    if r["kind"] == "regression":
        r2 = r.get("r2")
        head.add_row("RMSE", f"{r['rmse']:.6g}")
        head.add_row("MAE", f"{r['mae']:.6g}")
        head.add_row("R²", "—" if r2 is None else f"{r2:.4f}")
        return Group(head)
    head.add_row("accuracy", f"{_pct(r['accuracy'])} of {r['rows']} rows")
    head.add_row("macro F1", f"{r['macro_f1']:.4f}")
    per = Table(title="per class", title_justify="left")
    for col in ("class", "precision", "recall", "F1", "support"):
        per.add_column(col, justify="left" if col == "class" else "right")
    for name, c in r["classes"].items():
        per.add_row(
            name, f"{c['precision']:.3f}", f"{c['recall']:.3f}", f"{c['f1']:.3f}", str(c["support"])
        )
    labels = r["confusion"]["labels"]
    cm = Table(title="confusion (rows: true, columns: predicted)", title_justify="left")
    cm.add_column("")
    for name in labels:
        cm.add_column(name, justify="right")
    for name, row in zip(labels, r["confusion"]["matrix"], strict=True):
        cm.add_row(name, *(str(v) for v in row))
    return Group(head, Text(""), per, Text(""), cm)


def _counts(d: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(d.items())) or "none"


def _security_rows(sec: dict[str, Any], e: dict[str, Any], now: float) -> list[tuple[str, str]]:
    key = sec.get("consortium_key_id")
    members = sec.get("members") or {}
    rows = [
        (
            "network",
            (f"private (consortium key {key})" if key else "[red]open: no consortium key[/]")
            + (f", {len(members)} members listed" if members else ", no member list"),
        ),
        (
            "refused",
            f"connections: {_counts(sec.get('connections_refused', {}))}; "
            f"streams: {_counts(sec.get('streams_refused', {}))}",
        ),
    ]
    screening = sec.get("screening") or {}
    if screening.get("enabled"):
        radius = screening.get("clip_radius")
        rows.append(
            (
                "screening",
                f"{e.get('clipped', 0)} models clipped, "
                f"radius {_num(radius, '.3f') if radius is not None else '— (warming up)'}",
            )
        )
    else:
        rows.append(("screening", "[red]off[/]"))
    banned = sec.get("banned") or []
    offences = sec.get("offences") or {}
    if banned or offences:
        who = ", ".join(
            f"{b.get('name') or '…' + b['peer_id'][-12:]} ({b['until'] - now:.0f}s left)"
            for b in banned
        )
        rows.append(("bans", f"offences: {_counts(offences)}; banned now: {who or 'none'}"))
    return rows
