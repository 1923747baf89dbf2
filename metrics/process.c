/*
 * The process_* metrics every Prometheus client library exports (the
 * names and units of client_golang's process collector), read from
 * /proc/self and getrusage(2) when /metrics is scraped.
 */
#include "metrics/metrics.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

/* The process's start in unix seconds: its start time in clock ticks
 * after boot (/proc/self/stat field 22) plus the boot time (/proc/stat
 * btime). -1 when unknown. */
static double
start_time(void)
{
    char buf[1024];
    FILE *f = fopen("/proc/self/stat", "r");
    if (f == NULL)
        return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* The command name (field 2) may hold spaces and parentheses: the
     * fields after it start after the last ')'. */
    char *p = strrchr(buf, ')');
    if (p == NULL)
        return -1;
    unsigned long long ticks = 0;
    /* after ')': field 3 (state) is the first; starttime is field 22 */
    int field = 2;
    for (char *tok = strtok(p + 1, " "); tok; tok = strtok(NULL, " ")) {
        if (++field == 22) {
            ticks = strtoull(tok, NULL, 10);
            break;
        }
    }
    if (field != 22)
        return -1;
    f = fopen("/proc/stat", "r");
    if (f == NULL)
        return -1;
    unsigned long long btime = 0;
    bool found = false;
    while (fgets(buf, sizeof(buf), f) != NULL)
        if (sscanf(buf, "btime %llu", &btime) == 1) {
            found = true;
            break;
        }
    fclose(f);
    long hz = sysconf(_SC_CLK_TCK);
    if (!found || hz <= 0)
        return -1;
    return (double)btime + (double)ticks / (double)hz;
}

static long
open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return -1;
    long n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1;       /* the directory's own descriptor */
}

char *
metrics_process_prometheus(void)
{
    size_t cap = 2048, len = 0;
    char *out = malloc(cap);
    if (out == NULL)
        return NULL;
    out[0] = '\0';
#define P(...) len += (size_t)snprintf(out + len, len < cap ? cap - len : 0, __VA_ARGS__)
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        P("# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n"
          "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total %.6f\n",
          (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
          (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6);
    unsigned long long vsize = 0, rss = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f != NULL) {
        if (fscanf(f, "%llu %llu", &vsize, &rss) == 2) {
            long page = sysconf(_SC_PAGESIZE);
            P("# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
              "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes %llu\n"
              "# HELP process_virtual_memory_bytes Virtual memory size in bytes.\n"
              "# TYPE process_virtual_memory_bytes gauge\nprocess_virtual_memory_bytes %llu\n",
              rss * (unsigned long long)page, vsize * (unsigned long long)page);
        }
        fclose(f);
    }
    long fds = open_fds();
    if (fds >= 0)
        P("# HELP process_open_fds Number of open file descriptors.\n"
          "# TYPE process_open_fds gauge\nprocess_open_fds %ld\n", fds);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        P("# HELP process_max_fds Maximum number of open file descriptors.\n"
          "# TYPE process_max_fds gauge\nprocess_max_fds %llu\n",
          rl.rlim_cur == RLIM_INFINITY ? 0ULL : (unsigned long long)rl.rlim_cur);
    double st = start_time();
    if (st >= 0)
        P("# HELP process_start_time_seconds Start time of the process since unix epoch in "
          "seconds.\n# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds %.2f\n",
          st);
#undef P
    if (len >= cap) {
        free(out);
        return NULL;
    }
    return out;
}
