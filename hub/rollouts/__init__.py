"""Fleet rollouts: a release reaches a target of devices wave by wave, each wave gated on
install results and on the release's anonymous health telemetry.

    spec        what an operator asks for, validated (bad input names its field)
    machine     the state machine as data: states, events, one transition table
    plan        devices drawn in a random but recorded order, cut into waves
    pacing      how many devices may be notified by now (base rate, exponential increase)
    gates       install and health gates: pure functions of counts and telemetry
    models      the tables: rollouts, waves, members, gate results, audit log
    store       create a rollout (checked, stored in one transaction) and read it back
    driver      one step of every active rollout (the hub's scheduler job runs it)
    actions     operator actions: approve, pause, resume, abort, rollback (audited)
    api         REST API under /api/v1/ with operator tokens and roles
    cli         `edge-hub rollout ...`
"""
