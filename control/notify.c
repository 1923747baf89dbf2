/*
 * systemd's readiness protocol (sd_notify(3)), for a unit with
 * Type=notify; without NOTIFY_SOCKET in the environment every call is a
 * no-op. READY=1 once the listeners are up; around a reload RELOADING=1
 * (with MONOTONIC_USEC, as Type=notify-reload wants) and then READY=1 with
 * the outcome in STATUS=; STOPPING=1 when the drain begins. A refused
 * reload keeps serving the old generation, so the service stays ready:
 * STATUS= says why, and `systemctl reload` fails through ExecReload
 * (sluicectl reload answers non-zero on a refused config).
 */
#include <stdio.h>
#include <systemd/sd-daemon.h>
#include <time.h>

#include "control/control.h"

static unsigned long long
monotonic_usec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000;
}

void
notify_ready(unsigned long long generation)
{
    sd_notifyf(0, "READY=1\nSTATUS=serving generation %llu", generation);
}

void
notify_stopping(void)
{
    sd_notify(0, "STOPPING=1\nSTATUS=draining");
}

int
notify_reload(char *err, size_t errlen, struct cfg_errors *errs)
{
    sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=reloading", monotonic_usec());
    int rc = control_reload(err, errlen, errs);
    if (rc == 0)
        sd_notifyf(0, "READY=1\nSTATUS=serving generation %llu",
                   (unsigned long long)control_current()->generation);
    else
        sd_notifyf(0, "READY=1\nSTATUS=reload refused, serving generation %llu: %.300s",
                   (unsigned long long)control_current()->generation, err);
    return rc;
}
