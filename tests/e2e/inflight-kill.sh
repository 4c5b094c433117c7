# shellcheck shell=bash
# The `inflight-kill` case of tests/e2e/run.sh (sourced by it; uses its helpers).
#
# QEMU (vhost-user-blk-pci, 2 queues, chardev reconnect=1) against our blk daemon with
# --direct (the I/O-thread engine: completions out of order). The guest runs
# INFLIGHT_WRITERS O_DIRECT writers at once (queue depth up to that many), each writing
# fresh patterns over its own region, round after round, for INFLIGHT_SECS seconds. Meanwhile
# the host SIGKILLs the daemon INFLIGHT_KILLS times at random moments and starts it again on
# the same socket at once; QEMU reconnects and hands the new daemon the inflight area
# (SET_INFLIGHT_FD), which resubmits what the dead one left in flight. Each kill comes a
# random INFLIGHT_GAP_MIN..MAX seconds after the previous one, at the first moment from
# then on (up to INFLIGHT_AIM seconds) when the inflight area shows a request in flight
# (the daemon is idle most of the time: the TCG guest is the bottleneck). To look, the
# daemon is frozen (SIGSTOP) and its area read through /proc; if nothing is in flight it
# runs on (SIGCONT) for a few milliseconds, else the SIGKILL lands on exactly what was seen.
#
# The gaps shrink when the time left needs it, so that the INFLIGHT_KILLS kills fit in the
# writes.
#
# Checked: each daemon alive until its SIGKILL and dead of it (exit status 137: a daemon that
# crashed by itself fails), QEMU reconnecting within 10 s of each restart, no guest I/O error
# and no hang (every writer's dd exit 0, the guest finishes), the
# queue depth the guest reached, every kill followed by a daemon that got the inflight area,
# and every block of the host image == what the guest last wrote there (each writer's last
# round) or, outside the writers' regions, the original content. Reported: the requests
# each restarted daemon resubmitted (from its log).

# INFLIGHT_PACKED=1: the same with QEMU's packed=on (packed rings, the spec's packed
# inflight layout); see inflight-kill-packed.sh.
defaults INFLIGHT_PACKED= INFLIGHT_SECS=30 INFLIGHT_WRITERS=8 INFLIGHT_MIB=1 INFLIGHT_KILLS=6 \
    INFLIGHT_GAP_MIN=1.5 INFLIGHT_GAP_MAX=3.5 INFLIGHT_AIM=1

# The daemon's line for an accepted SET_INFLIGHT_FD (and nothing else it logs).
INFLIGHT_AREA_RE='inflight area: [0-9]+ queue[(]s[)] of [0-9]+ entries, offset 0x[0-9a-f]+$'

# A random number of seconds in [INFLIGHT_GAP_MIN, INFLIGHT_GAP_MAX], at most MAX when given
# (at least 0.3).
inflight_gap() { # [max]
    awk -v lo="$INFLIGHT_GAP_MIN" -v hi="$INFLIGHT_GAP_MAX" -v r="$RANDOM" -v max="${1:-}" \
        'BEGIN { g = lo + (hi - lo) * r / 32767; if (max != "" && g > max) g = max
                 if (g < 0.3) g = 0.3; printf "%.2f", g }'
}

# How many inflight areas daemon LOG says it was handed.
inflight_handed() { # log
    grep -cE "$INFLIGHT_AREA_RE" "$1"
}

# Whether daemon PID's inflight area (its memfd, read through /proc) flags a request in
# flight, in any queue region. The shape (queues, entries, offset) is the last area the
# daemon log LOG reports; split: queue regions are ALIGN_UP(16 * entries + 2, 64) bytes
# apart, each a 16-byte header and then 16-byte entries; packed: ALIGN_UP(32 * entries + 29,
# 64), a 32-byte header and 32-byte entries. An entry's first byte is the flag.
inflight_busy() { # pid log
    local f shape nq size off region q e=16
    shape=$(grep -oE "$INFLIGHT_AREA_RE" "$2" | tail -n1 | tr -c '0-9x\n' ' ')
    read -r nq size off <<<"$shape"
    [ -n "$off" ] || return 1
    [ -n "$INFLIGHT_PACKED" ] && e=32
    region=$(((e * size + (e == 32 ? 29 : 2) + 63) / 64 * 64))
    for f in /proc/"$1"/fd/*; do
        case $(readlink "$f" 2>/dev/null) in
            *memfd:vhost-inflight*)
                for q in $(seq 0 $((nq - 1))); do
                    od -An -tu1 -v -w$e -j$((off + q * region + e)) -N$((e * size)) "$f"
                done 2>/dev/null | awk '$1 == 1 { f = 1 } END { exit !f }'
                return ;;
        esac
    done
    return 1
}

# Freezes daemon PID at a moment it has a request in flight, trying for at most
# INFLIGHT_AIM seconds; the daemon is left frozen either way (the caller kills it). Status 0
# if it was caught with one.
inflight_aim() { # pid log
    local end
    end=$(awk -v t="$(now)" -v a="$INFLIGHT_AIM" 'BEGIN { printf "%.3f", t + a }')
    while :; do
        kill -STOP "$1" 2>/dev/null || return 1
        inflight_busy "$1" "$2" && return 0
        awk -v t="$(now)" -v e="$end" 'BEGIN { exit !(t < e) }' || return 1
        kill -CONT "$1" 2>/dev/null
        sleep 0.003
    done
}

# Writes writer J's round R pattern over its region of FILE (what the guest wrote).
inflight_overlay() { # file seed j round
    local off=$(($3 * INFLIGHT_MIB))
    awk -v seed="$2-$3-$4" -v first="$((off * 2048))" -v n="$((INFLIGHT_MIB * 2048))" \
        'BEGIN { for (i = 0; i < n; i++) printf "%-511s\n", "E2E-" seed "-sector-" (first + i) }' |
        dd of="$1" bs=1M seek="$off" conv=notrunc status=none
}

test_inflight_kill() {
    local name=inflight-kill${INFLIGHT_PACKED:+-packed}
    local img=$RUN_DIR/$name.img sock=$RUN_DIR/$name.sock seed pid k gap
    local before_kill= kills=0 starts=1 aimed=0 busy handed i status t_end left room
    local dlog=$RUN_DIR/$name.daemon.log
    LOG_NAME=$name
    BOOT_TIME=-
    begin_checks
    if [ "${E2E_BACKENDS:-ours}" != ours ]; then
        log "$name: skipped with E2E_BACKENDS=$E2E_BACKENDS"
        return
    fi
    make_image "$img"
    cp "$img" "$img.orig"
    seed=$(new_seed)
    log "$name: starting the blk daemon (--direct, 2 queues)"
    if ! start_daemon blk-direct "$sock" "$img" 0; then
        boot_fail "$name" "daemon did not start"
        return
    fi
    pid=$DAEMON_PID
    launch_qemu "vhost-user-blk-pci,num-queues=2${INFLIGHT_PACKED:+,packed=on}" "$QEMU_SOCK" 1 \
        "e2e.tests=inflight e2e.seed=$seed e2e.inflight_secs=$INFLIGHT_SECS" \
        "e2e.inflight_writers=$INFLIGHT_WRITERS e2e.inflight_mib=$INFLIGHT_MIB"
    wait_serial_mark E2E-INFLIGHT-START
    if grep -aq 'E2E-INFLIGHT-START' "$SERIAL"; then
        before_kill=$(wc -l <"$SERIAL")
        # The guest writes for INFLIGHT_SECS from now: the gaps shrink when needed so that the
        # INFLIGHT_KILLS kills fit in (a slow reconnection eats into the time left).
        t_end=$(awk -v t="$(now)" -v s="$INFLIGHT_SECS" 'BEGIN { printf "%.3f", t + s - 1 }')
        k=0
        while [ "$kills" -lt "$INFLIGHT_KILLS" ] && [ "$k" -lt $((2 * INFLIGHT_KILLS)) ]; do
            k=$((k + 1))
            left=$((INFLIGHT_KILLS - kills))
            room=$(awk -v t="$(now)" -v e="$t_end" -v n="$left" -v a="$INFLIGHT_AIM" \
                'BEGIN { printf "%.2f", (e - t) / n - a }')
            gap=$(inflight_gap "$room")
            sleep "$gap"
            grep -aq 'E2E-INFLIGHT-END' "$SERIAL" && break
            # The daemon must be alive here: one that died on its own failed the test.
            if ! kill -0 "$pid" 2>/dev/null; then
                wait "$pid" 2>/dev/null
                ok "daemon alive before kill $k" 1 "pid $pid exited by itself, status $?"
                break
            fi
            busy=idle
            inflight_aim "$pid" "$dlog" && busy="requests in flight" && aimed=$((aimed + 1))
            kill -KILL "$pid" 2>/dev/null
            wait "$pid" 2>/dev/null
            status=$?
            if [ "$status" != 137 ]; then
                ok "daemon killed by SIGKILL at kill $k" 1 "exit status $status, not 137"
                break
            fi
            kills=$((kills + 1))
            # A killed daemon leaves its socket file behind.
            rm -f "$sock"
            handed=$(inflight_handed "$dlog")
            if ! start_daemon blk-direct "$sock" "$img" 0; then
                ok "daemon restarted after kill $k" 1 "did not listen again"
                break
            fi
            pid=$DAEMON_PID
            starts=$((starts + 1))
            # The next gap counts from QEMU's reconnection (its rings started again with the
            # area), not from the restart.
            i=0
            while [ "$(inflight_handed "$dlog")" -le "$handed" ] && [ $i -lt 200 ]; do
                sleep 0.05
                i=$((i + 1))
            done
            if [ "$(inflight_handed "$dlog")" -le "$handed" ]; then
                ok "QEMU reconnected after kill $k and handed the area" 1 \
                    "no SET_INFLIGHT_FD within 10 s of pid $pid listening"
                break
            fi
            log "$name: kill $k ${gap}s after the previous one ($busy); pid $pid" \
                "handed the area $(awk -v i=$i 'BEGIN { printf "%.2f", i * 0.05 }')s after listening"
        done
    fi
    wait_qemu
    log "$name: QEMU exit $QEMU_RC after ${BOOT_TIME}s"
    check_boot_basics "$before_kill"
    check_eq "guest saw the disk" "$(get blk_present)" 1
    ok "daemon SIGKILLed at least 5 times during the writes" $([ "$kills" -ge 5 ] && echo 0 || echo 1) \
        "$kills kills (raise INFLIGHT_SECS or lower the gaps)"
    local qd
    qd=$(get inflight_max_qd)
    ok "guest queue depth reached $INFLIGHT_WRITERS" $([ "${qd:-0}" -ge "$INFLIGHT_WRITERS" ] && echo 0 || echo 1) \
        "deepest queue seen: ${qd:-none}"
    info "deepest queue the guest saw: ${qd:-none}"
    local j rounds total=0 exp=$img.expected
    cp "$img.orig" "$exp"
    for j in $(seq 0 $((INFLIGHT_WRITERS - 1))); do
        rounds=$(get "inflight_w${j}_rounds")
        check_eq "writer $j: no I/O error (dd exit status)" "$(get "inflight_w${j}_status")" 0
        ok "writer $j completed rounds" $([ "${rounds:-0}" -ge 1 ] && echo 0 || echo 1) "rounds '${rounds}'"
        [ "${rounds:-0}" -ge 1 ] && inflight_overlay "$exp" "$seed" "$j" "$rounds"
        total=$((total + ${rounds:-0}))
    done
    info "rounds written: $total ($((total * INFLIGHT_MIB)) MiB in 64 KiB O_DIRECT writes)"
    check_eq "guest fsync after the writes" "$(get inflight_fsync_status)" 0
    check_eq "guest read-back == what the writers last wrote" "$(get inflight_readback_md5)" \
        "$(range_md5 "$exp" 0 $((INFLIGHT_WRITERS * INFLIGHT_MIB)))"
    local same=1
    cmp -s "$img" "$exp" && same=0
    ok "every block of the host image == what the guest last wrote (or the original)" $same \
        "$(cmp "$img" "$exp" 2>&1 | head -n1)"
    # Every restarted daemon got the area back; what each resubmitted.
    local without
    without=$(awk -v re="$INFLIGHT_AREA_RE" '/^### .* start: / { if (n && !seen) miss++; n++; seen = 0 }
        $0 ~ re { seen = 1 } END { if (n && !seen) miss++; print miss + 0 }' "$dlog")
    check_eq "each of the $starts daemons was handed the inflight area" "$without" 0
    info "requests resubmitted per restart (daemon log, per queue):"
    awk '/^### .* start: / { n++ } /inflight region: / {
            sub(/.*vring /, "vring "); print "      restart " (n - 1) ": " $0 }' "$dlog"
    local resub
    resub=$(grep -o 'inflight region: [0-9]* request' "$dlog" | awk '{ s += $3 } END { print s + 0 }')
    info "requests resubmitted in all: $resub over $kills kills ($aimed found requests in flight)"
    if [ "$aimed" -gt 0 ]; then
        ok "requests left in flight by killed daemons were resubmitted" \
            $([ "$resub" -ge 1 ] && echo 0 || echo 1) "none resubmitted after $aimed kills mid-request"
    fi
    ok_alive "last daemon still running" "$pid"
    if [ -n "$INFLIGHT_PACKED" ]; then
        check_eq "guest virtio features: bit 34 (RING_PACKED)" "$(packed_bit)" 1
        ok "the daemons made and took the area in the packed layout" \
            $(grep -q 'inflight area: the packed layout' "$dlog" && echo 0 || echo 1) \
            "no 'packed layout' line in $dlog"
    fi
    stop_pid "$pid"
    finish_boot "$name"
    rm -f "$img.orig" "$exp"
    return 0
}
