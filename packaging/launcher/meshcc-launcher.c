/*
 * meshcc-gcc / meshcc-g++ / meshcc-cc / meshcc-c++: the compile client's fast start.
 *
 * Why: a Python interpreter's start (~9 ms of CPU with -IS) is most of what meshcc's client
 * costs per job, more than distcc's whole client. This small program hands the job to a
 * warm per-user Python process, the zygote (meshcc/client/zygote.py), which forks a worker
 * per job that runs the same code as the Python launcher (meshcc.client.wrapper). The
 * worker gets this process's argv, whole environment, umask, cwd, signal mask and ignored
 * signals, and its open file descriptors (stdio, a jobserver pipe...), so the job behaves
 * as if it ran here. This process then only relays signals and the exit status.
 *
 * Whenever the fast path cannot be taken before the job is handed over (no zygote yet, a
 * stale socket, an unsafe socket directory, another meshcc install, LD_PRELOAD, a Portage
 * sandbox, MESHCC_ZYGOTE=0, root), it execs the Python launcher exactly as before, and
 * when no zygote answers it starts one in the background for the next job. A job never
 * fails because of the fast path.
 *
 * Build (install.sh does it): cc -std=c99 -O2 with MESHCC_PYTHON, MESHCC_LIBEXEC,
 * MESHCC_INSTALL_ID and MESHCC_PACKAGE defined as C string literals.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

#if !defined(MESHCC_PYTHON) || !defined(MESHCC_LIBEXEC) || !defined(MESHCC_INSTALL_ID) || \
    !defined(MESHCC_PACKAGE)
#error "define MESHCC_PYTHON, MESHCC_LIBEXEC, MESHCC_INSTALL_ID and MESHCC_PACKAGE"
#endif
#ifndef MESHCC_ZYGOTE_DEFAULT
#define MESHCC_ZYGOTE_DEFAULT 1
#endif

#define PROTO_MAGIC "MZY1"
#define MAX_FDS 250       /* SCM_RIGHTS carries at most 253 per message (SCM_MAX_FD) */
#define MAX_REQUEST (8u << 20)
/* How long a zygote may take to fork a worker and hand it the job (normally ~1-2 ms). A
 * zygote that is stopped, stuck or swamped past this is given up on: this job runs in the
 * Python launcher, and the zygote's socket is removed so that later jobs do not wait too. */
#define HANDOVER_TIMEOUT_S 5

extern char **environ;

static const char python_path[] = MESHCC_PYTHON;
static const char client_script[] = MESHCC_LIBEXEC "/client";
static const char cli_script[] = MESHCC_LIBEXEC "/cli";
static const char zygote_script[] = MESHCC_LIBEXEC "/zygote";
static const char *script = client_script; /* the Python launcher this command falls back to */

static sigset_t orig_mask;
static volatile sig_atomic_t worker_pgid;

/* ------------------------------------------------------------------ a growing buffer */

struct buf {
    char *data;
    size_t len, cap;
    int failed;
};

static void buf_add(struct buf *b, const void *p, size_t n)
{
    if (b->failed)
        return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        if (cap > MAX_REQUEST) {
            b->failed = 1;
            return;
        }
        char *d = realloc(b->data, cap);
        if (!d) {
            b->failed = 1;
            return;
        }
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

static void buf_str(struct buf *b, const char *s) { buf_add(b, s, strlen(s)); }

static void buf_u32(struct buf *b, uint32_t v) { buf_add(b, &v, sizeof v); }

static void buf_u64(struct buf *b, uint64_t v) { buf_add(b, &v, sizeof v); }

static void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void buf_printf(struct buf *b, const char *fmt, ...)
{
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0 && (size_t)n < sizeof tmp)
        buf_add(b, tmp, (size_t)n);
    else
        b->failed = 1;
}

/* ------------------------------------------------------------------ the slow path */

static const char *exec_name(char **argv)
{
    /* What the kernel would have passed a #! interpreter as the script's path: the name
     * given to execve, so that sys.argv[0] (the wrapper reads its compiler and any
     * masquerade directory from it) is the same as under the Python launcher. */
    const char *fn = (const char *)getauxval(AT_EXECFN);
    return fn ? fn : argv[0];
}

static void exec_python(int argc, char **argv) __attribute__((noreturn));
static void exec_python(int argc, char **argv)
{
    char **args = calloc((size_t)argc + 5, sizeof *args);
    if (args) {
        args[0] = (char *)python_path;
        args[1] = (char *)"-IS";
        args[2] = (char *)script;
        args[3] = (char *)exec_name(argv);
        for (int i = 1; i < argc; i++)
            args[3 + i] = argv[i];
        sigprocmask(SIG_SETMASK, &orig_mask, NULL);
        execv(python_path, args);
    }
    fprintf(stderr, "meshcc: cannot run %s: %s\n", python_path, strerror(errno));
    _exit(127);
}

/* ------------------------------------------------------------------ the zygote's key */

static void add_ns(struct buf *key)
{
    static const char *const names[] = {"net", "mnt", "pid", "user", "uts", "ipc", "cgroup"};
    char path[64], link[64];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(path, sizeof path, "/proc/self/ns/%s", names[i]);
        ssize_t n = readlink(path, link, sizeof link - 1);
        if (n < 0)
            n = 0;
        link[n] = 0;
        buf_str(key, link);
        buf_str(key, ",");
    }
}

static void add_file(struct buf *key, const char *path)
{
    char tmp[4096];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    ssize_t n;
    while ((n = read(fd, tmp, sizeof tmp)) > 0)
        buf_add(key, tmp, (size_t)n);
    close(fd);
}

/* The confinement /proc/self/status shows: capabilities, no_new_privs, seccomp filters,
 * the memory nodes allowed; a job confined this way must never run in a zygote that is
 * not (nor the reverse). */
static void add_status(struct buf *key)
{
    static const char *const wanted[] = {"Cap",      "NoNewPrivs:", "Seccomp",
                                         "Mems_allowed:"};
    char tmp[8192];
    int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        key->failed = 1;
        return;
    }
    size_t len = 0;
    ssize_t n;
    while (len < sizeof tmp - 1 && (n = read(fd, tmp + len, sizeof tmp - 1 - len)) > 0)
        len += (size_t)n;
    close(fd);
    tmp[len] = 0;
    for (char *line = tmp; line && *line;) {
        char *end = strchr(line, '\n');
        size_t ll = end ? (size_t)(end - line) + 1 : strlen(line);
        for (size_t i = 0; i < sizeof wanted / sizeof wanted[0]; i++)
            if (strncmp(line, wanted[i], strlen(wanted[i])) == 0)
                buf_add(key, line, ll);
        line = end ? end + 1 : NULL;
    }
}

static void add_stat(struct buf *key, const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        key->failed = 1;
        return;
    }
    buf_printf(key, "%llx:%llx:%lld.%09ld;", (unsigned long long)st.st_dev,
               (unsigned long long)st.st_ino, (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
}

/* Everything a forked worker would otherwise inherit from the zygote instead of from this
 * process, apart from what the request carries: the install (an upgrade gets a new
 * zygote), the interpreter, namespaces, root directory, credentials, limits, priority,
 * CPU affinity, cgroup, capabilities, no_new_privs, seccomp, LSM label and the locale the
 * interpreter decodes argv with. */
static void make_key(struct buf *key)
{
    buf_str(key, "meshcc-zygote 1;" MESHCC_INSTALL_ID ";" MESHCC_PYTHON ";");
    add_stat(key, python_path);
    add_stat(key, MESHCC_PACKAGE);
    add_ns(key);
    add_stat(key, "/");
    buf_printf(key, "u%llu:g%llu:", (unsigned long long)getuid(), (unsigned long long)getgid());
    gid_t groups[64];
    int ng = getgroups(64, groups);
    if (ng < 0) {
        key->failed = 1;
        return;
    }
    for (int i = 0; i < ng; i++)
        buf_printf(key, "%llu,", (unsigned long long)groups[i]);
    errno = 0;
    int nice = getpriority(PRIO_PROCESS, 0);
    buf_printf(key, ";n%d;s%d;", nice, sched_getscheduler(0));
    for (int r = 0; r < RLIM_NLIMITS; r++) {
        struct rlimit rl;
        if (getrlimit(r, &rl) == 0)
            buf_printf(key, "%llx/%llx,", (unsigned long long)rl.rlim_cur,
                       (unsigned long long)rl.rlim_max);
    }
    cpu_set_t cpus;
    if (sched_getaffinity(0, sizeof cpus, &cpus) == 0) {
        const unsigned char *p = (const unsigned char *)&cpus;
        for (size_t i = 0; i < sizeof cpus; i += 8) {
            unsigned long long w = 0;
            memcpy(&w, p + i, 8);
            if (w)
                buf_printf(key, "a%llx@%zu", w, i);
        }
    }
    buf_str(key, ";");
    add_file(key, "/proc/self/cgroup");
    add_status(key);
    add_file(key, "/proc/self/attr/current"); /* the LSM label (AppArmor, SELinux) */
    static const char *const locale_vars[] = {"LC_ALL", "LC_CTYPE", "LANG"};
    for (size_t i = 0; i < 3; i++) {
        const char *v = getenv(locale_vars[i]);
        buf_str(key, v ? ";=" : ";");
        if (v)
            buf_str(key, v);
    }
}

static uint64_t fnv1a(const char *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

/* ------------------------------------------------------------------ the socket's place */

/* A directory we may hand fds and the environment through: ours, a real directory (lstat:
 * not a symlink), closed to group and others. 1 if so, 0 if it is not there, -1 if it is
 * there and unsafe. */
static int private_dir(const char *dir)
{
    struct stat st;
    if (lstat(dir, &st) != 0)
        return errno == ENOENT ? 0 : -1;
    if (!S_ISDIR(st.st_mode) || st.st_uid != getuid() || (st.st_mode & 077) != 0)
        return -1;
    return 1;
}

static int socket_dir(char *dir, size_t size)
{
    const char *xdg = getenv("XDG_RUNTIME_DIR");
    struct stat st;
    if (xdg && xdg[0] == '/' && strlen(xdg) < 64 && lstat(xdg, &st) == 0 &&
        S_ISDIR(st.st_mode) && st.st_uid == getuid()) {
        snprintf(dir, size, "%s/meshcc", xdg);
        return 0;
    }
    snprintf(dir, size, "/tmp/meshcc-%llu", (unsigned long long)getuid());
    return 0;
}

/* ------------------------------------------------------------------ starting a zygote */

/* Close every descriptor from `low` up: the zygote must keep none of the build's (a
 * jobserver pipe, a log), however high its number. */
static void close_from(int low)
{
#ifdef SYS_close_range
    if (syscall(SYS_close_range, (unsigned)low, ~0u, 0u) == 0)
        return;
#endif
    long max = sysconf(_SC_OPEN_MAX);
    if (max < 0 || max > 1 << 20)
        max = 1 << 20;
    for (long fd = low; fd < max; fd++)
        close((int)fd);
}

static void start_zygote(const char *dir, const char *sock, const char *lock, const char *key)
{
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return;
    if (private_dir(dir) != 1)
        return;
    /* The lock says a zygote for this key lives or is starting: only one is ever started.
     * The zygote inherits the locked file (flock locks belong to the open file), so it
     * holds it for its whole life. */
    int lockfd = open(lock, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (lockfd < 0)
        return;
    if (flock(lockfd, LOCK_EX | LOCK_NB) != 0) {
        close(lockfd);
        return;
    }
    pid_t pid = fork();
    if (pid == 0) {
        setsid();
        if (fork() != 0)
            _exit(0);
        /* The daemon: no terminal, stdio on /dev/null, no inherited descriptors, signals
         * at their defaults, an environment of just the locale (the key covers it). */
        if (chdir("/") != 0)
            _exit(0);
        umask(077);
        int null = open("/dev/null", O_RDWR);
        if (null < 0)
            _exit(0);
        dup2(null, 0);
        dup2(null, 1);
        dup2(null, 2);
        /* The lock at fd 3, kept across exec (dup2 onto itself would keep FD_CLOEXEC). */
        if (lockfd != 3 && dup2(lockfd, 3) != 3)
            _exit(0);
        if (fcntl(3, F_SETFD, 0) != 0)
            _exit(0);
        close_from(4);
        for (int s = 1; s < NSIG; s++)
            signal(s, SIG_DFL);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        /* The locale (the interpreter decodes argv by it; the key covers it) and the idle
         * time (tests shorten it), each also an argument: what the zygote's interpreter
         * adds to its environment beyond these, it adds to every job's, as a fresh
         * interpreter would (C locale coercion). */
        static const char *const locale_vars[] = {"LC_ALL", "LC_CTYPE", "LANG",
                                                  "MESHCC_ZYGOTE_IDLE"};
        char *env[5];
        char *args[11];
        int ne = 0, na = 0;
        args[na++] = (char *)python_path;
        args[na++] = (char *)"-IS";
        args[na++] = (char *)zygote_script;
        args[na++] = (char *)sock;
        args[na++] = (char *)key;
        for (size_t i = 0; i < 4; i++) {
            const char *v = getenv(locale_vars[i]);
            if (v) {
                size_t n = strlen(locale_vars[i]) + strlen(v) + 2;
                char *e = malloc(n);
                if (!e)
                    _exit(0);
                snprintf(e, n, "%s=%s", locale_vars[i], v);
                env[ne++] = e;
                args[na++] = e;
            }
        }
        env[ne] = NULL;
        args[na] = NULL;
        execve(python_path, args, env);
        _exit(0);
    }
    if (pid > 0)
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
            ;
    close(lockfd);
}

/* ------------------------------------------------------------------ the fast path */

static int read_full(int fd, void *p, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, (char *)p + got, n - got);
        if (r == 0)
            return 0;
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        got += (size_t)r;
    }
    return 1;
}

static void forward(int sig)
{
    int saved = errno;
    pid_t pg = worker_pgid;
    if (pg > 0) {
        if (sig == SIGTSTP) {
            /* Ctrl-Z: stop the worker's group, then ourselves (as the shell expects);
             * SIGCONT, forwarded below, wakes them again. */
            kill(-pg, SIGSTOP);
            kill(getpid(), SIGSTOP);
        } else {
            kill(-pg, sig);
        }
    }
    errno = saved;
}

static void die_as(int status) __attribute__((noreturn));
static void die_as(int status)
{
    if (WIFEXITED(status))
        _exit(WEXITSTATUS(status));
    int sig = WIFSIGNALED(status) ? WTERMSIG(status) : SIGKILL;
    struct rlimit none = {0, 0};
    setrlimit(RLIMIT_CORE, &none); /* the worker dumped (or not); we must not */
    signal(sig, SIG_DFL);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, sig);
    sigprocmask(SIG_UNBLOCK, &set, NULL);
    kill(getpid(), sig);
    _exit(128 + sig);
}

static int env_ok(char **env, size_t *count)
{
    /* Entries the interpreter would treat differently from a plain list of NAME=value:
     * without '=', an empty name, or a name given twice (Python keeps the first, the C
     * environment and so an exec'd compiler both). Those jobs take the Python launcher. */
    size_t n = 0;
    for (char **e = env; *e; e++, n++) {
        const char *eq = strchr(*e, '=');
        if (!eq || eq == *e)
            return 0;
        size_t len = (size_t)(eq - *e) + 1;
        for (char **f = env; f != e; f++)
            if ((*f)[0] == (*e)[0] && strncmp(*f, *e, len) == 0)
                return 0;
    }
    *count = n;
    return 1;
}

static uint64_t sigbits(const sigset_t *set)
{
    uint64_t bits = 0;
    for (int s = 1; s < 64 && s < NSIG; s++)
        if (sigismember(set, s) == 1)
            bits |= 1ull << (s - 1);
    return bits;
}

static int collect_fds(int sock, int *fds, int *count)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    int n = 0, skip = dirfd(d);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] < '0' || de->d_name[0] > '9')
            continue;
        int fd = atoi(de->d_name);
        if (fd == skip || fd == sock)
            continue;
        int flags = fcntl(fd, F_GETFD);
        if (flags < 0 || (flags & FD_CLOEXEC))
            continue;
        if (n >= MAX_FDS) {
            closedir(d);
            return -1;
        }
        fds[n++] = fd;
    }
    closedir(d);
    *count = n;
    return 0;
}

/* Hand the job over; returns only if it was not handed over (then: the Python launcher). */
static void try_zygote(int argc, char **argv, uint64_t t0)
{
    char **env = environ;
    if (getenv("LD_PRELOAD") || getenv("SANDBOX_ACTIVE"))
        return;
    const char *on = getenv("SANDBOX_ON");
    if (on && strcmp(on, "1") == 0)
        return;
    const char *want = getenv("MESHCC_ZYGOTE");
    if (want ? strcmp(want, "0") == 0 : !MESHCC_ZYGOTE_DEFAULT)
        return;
    /* Not for root (or set-id runs): a long-lived root process that forks jobs would carry
     * the first job's capabilities, securebits and security context to the next. */
    if (getuid() == 0 || geteuid() != getuid() || getegid() != getgid())
        return;
    /* A CPU-time limit is per process: the long-lived zygote would use it up over many
     * jobs and be killed mid-job, where each interpreter of the Python launcher starts
     * afresh. */
    struct rlimit cpu;
    if (getrlimit(RLIMIT_CPU, &cpu) != 0 || cpu.rlim_cur != RLIM_INFINITY)
        return;
    size_t envc;
    if (!env_ok(env, &envc))
        return;

    char dir[128], sock[160], lock[176];
    socket_dir(dir, sizeof dir);
    struct buf key = {0};
    make_key(&key);
    if (key.failed)
        return;
    buf_add(&key, "", 1);
    snprintf(sock, sizeof sock, "%s/z-%016llx", dir,
             (unsigned long long)fnv1a(key.data, key.len - 1));
    snprintf(lock, sizeof lock, "%s.lock", sock);

    int state = private_dir(dir);
    if (state < 0)
        return; /* someone else's, or open to others: never hand anything through it */
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(sock) >= sizeof addr.sun_path)
        return;
    strcpy(addr.sun_path, sock);
    int s = -1;
    if (state == 1) {
        s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (s < 0)
            return;
        if (connect(s, (struct sockaddr *)&addr, sizeof addr) != 0) {
            int err = errno;
            close(s);
            if (err == ENOENT || err == ECONNREFUSED)
                start_zygote(dir, sock, lock, key.data);
            return;
        }
        /* The directory is ours alone, so only we (or root) can have bound this; check the
         * listener is ours anyway before handing it anything. */
        struct ucred cred;
        socklen_t len = sizeof cred;
        if (getsockopt(s, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || cred.uid != getuid()) {
            close(s);
            return;
        }
    } else {
        start_zygote(dir, sock, lock, key.data);
        return;
    }

    int fds[MAX_FDS + 1];
    int nfds;
    fds[0] = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (fds[0] < 0 || collect_fds(s, fds + 1, &nfds) != 0) {
        close(s);
        return;
    }
    mode_t mask = umask(0);
    umask(mask);
    struct sigaction sa;
    sigset_t ignored;
    sigemptyset(&ignored);
    for (int sig = 1; sig < 64 && sig < NSIG; sig++)
        if (sigaction(sig, NULL, &sa) == 0 && sa.sa_handler == SIG_IGN)
            sigaddset(&ignored, sig);

    struct buf req = {0};
    buf_add(&req, PROTO_MAGIC, 4);
    buf_u32(&req, 0); /* the body's length, filled in below */
    buf_u32(&req, (uint32_t)(key.len - 1));
    buf_add(&req, key.data, key.len - 1);
    buf_u64(&req, t0);
    buf_u32(&req, (uint32_t)mask);
    buf_u64(&req, sigbits(&orig_mask));
    buf_u64(&req, sigbits(&ignored));
    buf_u32(&req, (uint32_t)nfds);
    for (int i = 0; i < nfds; i++)
        buf_u32(&req, (uint32_t)fds[i + 1]);
    buf_u32(&req, (uint32_t)argc);
    buf_u32(&req, (uint32_t)envc);
    buf_str(&req, exec_name(argv));
    buf_add(&req, "", 1);
    for (int i = 1; i < argc; i++)
        buf_add(&req, argv[i], strlen(argv[i]) + 1);
    for (size_t i = 0; i < envc; i++)
        buf_add(&req, env[i], strlen(env[i]) + 1);
    if (req.failed) {
        close(s);
        return;
    }
    uint32_t body = (uint32_t)(req.len - 8);
    memcpy(req.data + 4, &body, 4);

    union {
        struct cmsghdr h;
        char space[CMSG_SPACE(sizeof(int) * (MAX_FDS + 1))];
    } ctl;
    memset(&ctl, 0, sizeof ctl);
    struct iovec iov = {.iov_base = req.data, .iov_len = req.len};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    msg.msg_control = ctl.space;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)(nfds + 1));
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)(nfds + 1));
    memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)(nfds + 1));
    ssize_t sent;
    do
        sent = sendmsg(s, &msg, MSG_NOSIGNAL);
    while (sent < 0 && errno == EINTR);
    if (sent <= 0) {
        close(s);
        return;
    }
    size_t done = (size_t)sent;
    while (done < req.len) {
        ssize_t w = send(s, req.data + done, req.len - done, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            close(s);
            return;
        }
        done += (size_t)w;
    }
    close(fds[0]);

    /* The worker answers 'P' + its pid once it has taken everything over, then waits for
     * our 'G' before it runs the job; 'F' (it could not take it over) or 'V' (the zygote is
     * not ours) or an end or a timeout before 'P' mean the job never ran here. A worker
     * that gets no 'G' (we gave up on it) exits without running anything, so a job never
     * runs twice. */
    struct timeval limit = {.tv_sec = HANDOVER_TIMEOUT_S};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
    char tag;
    int32_t pid;
    int r = read_full(s, &tag, 1);
    if (r != 1 || tag != 'P' || read_full(s, &pid, 4) != 1 || pid <= 0 ||
        send(s, "G", 1, MSG_NOSIGNAL) != 1) {
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct stat st;
            if (lstat(sock, &st) == 0 && S_ISSOCK(st.st_mode))
                unlink(sock);
            fprintf(stderr, "meshcc: the meshcc zygote did not take the job within %d s; "
                            "running it without (a new zygote starts when this one is "
                            "gone)\n", HANDOVER_TIMEOUT_S);
        }
        close(s);
        return;
    }
    struct timeval forever = {0};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &forever, sizeof forever);
    worker_pgid = pid;
    struct sigaction fw = {.sa_handler = forward};
    sigemptyset(&fw.sa_mask);
    static const int relayed[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGTSTP, SIGCONT};
    for (size_t i = 0; i < sizeof relayed / sizeof relayed[0]; i++) {
        sigaction(relayed[i], NULL, &sa);
        if (sa.sa_handler != SIG_IGN || relayed[i] == SIGCONT)
            sigaction(relayed[i], &fw, NULL);
    }
    sigprocmask(SIG_SETMASK, &orig_mask, NULL); /* what arrived meanwhile is relayed now */

    char reply[1 + 4 + 16];
    if (read_full(s, reply, 1) != 1 || reply[0] != 'X' || read_full(s, reply + 1, 20) != 1) {
        fprintf(stderr, "meshcc: error: the meshcc zygote ended while running the job "
                        "(MESHCC_ZYGOTE=0 turns it off)\n");
        _exit(100);
    }
    int32_t status;
    memcpy(&status, reply + 1, 4);
    die_as(status);
}

/* `meshcc` itself: its subcommands and options (build.sh takes them from
 * meshcc.cli.entry, " word word "), which go straight to the Python command; without the
 * list every `meshcc ...` does. */
static int cli_word(const char *arg)
{
#ifdef MESHCC_CLI_WORDS
    static const char words[] = MESHCC_CLI_WORDS;
    size_t n = strlen(arg);
    for (const char *p = strstr(words, arg); n && p; p = strstr(p + 1, arg))
        if (p > words && p[-1] == ' ' && p[n] == ' ')
            return 1;
    return 0;
#else
    (void)arg;
    return 1;
#endif
}

int main(int argc, char **argv)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t t0 = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    /* Signals wait until the job is handed over (then they are relayed) or until the
     * Python launcher runs (then they take their course there). */
    sigset_t block;
    sigemptyset(&block);
    static const int relayed[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGTSTP};
    for (size_t i = 0; i < sizeof relayed / sizeof relayed[0]; i++)
        sigaddset(&block, relayed[i]);
    sigprocmask(SIG_BLOCK, &block, &orig_mask);
    /* meshcc-gcc & co. fall back to the compile client; `meshcc` and names it is linked
     * as (distcc-style masquerade: gcc -> meshcc) to the `meshcc` command, which runs its
     * subcommands and takes anything else as a compile (meshcc.cli.entry). */
    const char *name = exec_name(argv);
    const char *base = name ? strrchr(name, '/') : NULL;
    base = base ? base + 1 : name ? name : "";
    if (strncmp(base, "meshcc-", 7) != 0) {
        script = cli_script;
        if (argc < 2 || cli_word(argv[1])) /* as meshcc.cli.entry dispatches */
            exec_python(argc, argv);
    }
    if (argc >= 1)
        try_zygote(argc, argv, t0);
    exec_python(argc, argv);
}
