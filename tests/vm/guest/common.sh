# shellcheck shell=bash
# What both guest inits (init.sh, init-systemd.sh) share: the
# environment, the log line, the power-off, reading the job and running
# it.  Sourced, never run.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8
umask 022

say() { echo "LAB: $(cut -d' ' -f1 /proc/uptime) $*"; }

poweroff_now() {
    sync
    # Straight to the kernel (ACPI power-off makes qemu exit): there may
    # be no init system to ask, and an orderly systemd shutdown would
    # only cost time once the job has saved what it wants kept.
    echo o >/proc/sysrq-trigger
    sleep 30
}

# The harness's job.env (tests/vm/lab.py), or power off without it.
load_job_env() {
    if [[ ! -r /lab/job.env ]]; then
        say "no /lab/job.env"
        poweroff_now
    fi
    # shellcheck source=/dev/null
    source /lab/job.env
}

# Two loopback addresses, so targets can listen on two portals.
add_portals() {
    ip addr add 127.0.0.2/8 dev lo
    ip addr add 127.0.0.3/8 dev lo
}

# Run $LAB_SCRIPT, write its status to /lab/exit_status, power off.
run_job() {
    say "running $LAB_SCRIPT"
    cd /lab || true
    local cmd status
    case "$LAB_SCRIPT" in
    *.py) cmd=("$LAB_PYTHON" -u "$LAB_SCRIPT") ;;
    *) cmd=(/bin/bash "$LAB_SCRIPT") ;;
    esac
    # The job gets a timeout of its own so it can still report and power
    # off cleanly before the host's hard limit kills qemu.
    timeout --kill-after=10 "${LAB_TIMEOUT:-600}" "${cmd[@]}" </dev/null
    status=$?
    say "job exited with status $status"
    echo "$status" >/lab/exit_status
    poweroff_now
}
