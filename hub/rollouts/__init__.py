"""Fleet rollouts: a release reaches a target of devices wave by wave, each wave gated on
install results and on the release's anonymous health telemetry.

    spec        what an operator asks for, validated (bad input names its field)
    machine     the state machine as data: states, events, one transition table
    plan        devices drawn in a random but recorded order, cut into waves; pacing
    gates       install and health gates: pure functions of counts and aggregates
    results     a wave's install results from reported state and install events
    health      a release's telemetry over a period, from the k-anonymous cells
    models      the tables: rollouts, waves, members, gate decisions, audit log
    store       create a rollout (checked, stored in one transaction), transitions
    driver      one step of every active rollout (the hub's scheduler job runs it)
    revert      devices back to the release they had before
    actions     operator actions: approve, pause, resume, abort, rollback (audited)
    audit       the audit log
    releases    is a release listed by TUF and not revoked
    status      a rollout as the API and the CLI show it
    auth        operator tokens and roles (other authenticators plug in)
    api         REST API under /api/v1/
    jobs        the driver as a job of the serving hub
    cli         `edge-hub rollout ...`
"""
