/*
 * sandbox-helper: boots a sandbox and enters it, with host privileges only before the sandbox
 * can touch anything.
 *
 * Why C: every binary the server runs with host privileges must come from the host and must drop
 * those privileges before it resolves a single path the sandbox can write. A shell chain of
 * unshare, mount, bwrap and nsenter cannot promise that (bwrap looked its init up inside the
 * sandbox, nsenter exec'd setpriv from the sandbox's /usr/bin); this program can, in a few
 * hundred lines, and enters a sandbox in about a millisecond.
 *
 *   helper boot  --lower D --lower-mount D --disk-fd N --disk-mount D --merged D --hostname H --map BASE:COUNT
 *                [--stored-ids STORED] [--cgroup-procs F]... [--proc-view F]... [--shm-bytes N] [--ready-fd N]
 *                [--commands-fd N]
 *     A new network namespace owned by the host (the sandbox's root cannot change its routes or
 *     firewall; "net" on the ready fd says it exists) and a private mount namespace where the
 *     sandbox's disk (an ext4 image, open on fd N, holding its upper and work directories) is
 *     mounted on the disk mount dir: the host's own mount table never sees it, so nothing leaks
 *     when this process dies. The disk and the root filesystem (on the lower mount dir) hold owners
 *     in the canonical range STORED.. and are mounted idmapped onto the sandbox's own range BASE...
 *     Then a child in new
 *     user (ids 0..COUNT-1 inside are BASE.. outside),
 *     mount, PID, IPC, UTS and cgroup namespaces. The child mounts an overlay (lower read-only,
 *     the disk's upper writable) with the ids of the sandbox's root, pivots into it, mounts /proc,
 *     /dev, /dev/shm, /run and writes /etc/hosts. Over /proc go each host file F (lxcfs's views,
 *     at /proc/<its name>) and empty tables of disks. Then it moves into namespaces of its own below
 *     the sandbox's user namespace, where every mount made so far is locked (`move_inward`), and
 *     becomes the sandbox's pid 1 (a reaper running host code, whose command line names nothing of
 *     the host); every later process enters those namespaces through its pidfd. The parent prints the
 *     child's pid on the ready fd once the root is in place and waits; the disk stays reachable
 *     from the host as /proc/<parent>/root/<disk mount> while it lives.
 *
 *   helper store --image F --send-fd N
 *     Mounts the XFS image F (the server's disk store, which clones a file in constant time) as
 *     a detached mount, attached to no mount table at all, and sends the mount's fd over the
 *     unix socket N. The server reaches the store only through that fd: when the server goes,
 *     the mount and its loop device go with it.
 *
 *   helper enter --pidfd N --uid U --gid G [--groups G1,G2] [--cwd DIR] [--cgroup-procs F]...
 *                -- ARGV...
 *     Joins the sandbox's cgroups, enters all its namespaces through the init's pidfd, forks
 *     into its PID namespace, installs the seccomp filter (no nested user namespaces), becomes
 *     U:G with groups, and only then executes ARGV, which is resolved inside the sandbox.
 *
 *   helper boot ... --commands-fd N
 *     The boot process also starts commands, so a command costs no cgroup attach (on cgroup v1
 *     the first attach after an idle moment waits out an RCU grace period, 5-15 ms): it is in the
 *     sandbox's cgroups already, and a fork of it is too. The server sends one datagram per
 *     command on the unix socket N: two u32 counts (enter options, environment strings), then
 *     that many NUL-terminated strings (the options are enter's, without --pidfd and
 *     --cgroup-procs), with four descriptors: the command's stdin, stdout and stderr, and a
 *     status socket. A fork of this process then does what `enter` does. On the status socket
 *     the server gets the fork's pid and pidfd (or -1 and an errno: nothing started), then its
 *     wait status once it is reaped. Only the server holds the other end of N: nothing inside
 *     the sandbox can reach it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/loop.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_CGROUPS 8
#define MAX_PROC_VIEWS 8

static void die(const char *what) {
    fprintf(stderr, "sandbox-helper: %s: %s\n", what, strerror(errno));
    _exit(125);
}

static void fail(const char *what) {
    fprintf(stderr, "sandbox-helper: %s\n", what);
    _exit(125);
}

static void write_file(const char *path, const char *text) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) die(path);
    size_t len = strlen(text);
    if (write(fd, text, len) != (ssize_t)len) die(path);
    close(fd);
}

static void join_cgroups(char **files, int count) {
    char pid[32];
    snprintf(pid, sizeof pid, "%d\n", getpid());
    for (int i = 0; i < count; i++) write_file(files[i], pid);
}

static int open_dir(const char *path) {
    int fd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) die(path);
    return fd;
}

/* -- the new mount API: detached mounts we attach only once paths are the sandbox's ---------- */

static int fs_open(const char *type) {
    int fd = (int)syscall(SYS_fsopen, type, 1 /* FSOPEN_CLOEXEC */);
    if (fd < 0) die(type);
    return fd;
}

static void fs_set(int fs, const char *key, const char *value) {
    int cmd = value ? FSCONFIG_SET_STRING : FSCONFIG_SET_FLAG;
    if (syscall(SYS_fsconfig, fs, cmd, key, value, 0) < 0) die(key);
}

static int fs_mount(int fs, unsigned int attrs) {
    if (syscall(SYS_fsconfig, fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0) die("create filesystem");
    int mnt = (int)syscall(SYS_fsmount, fs, 1 /* FSMOUNT_CLOEXEC */, attrs);
    if (mnt < 0) die("fsmount");
    close(fs);
    return mnt;
}

static void attach(int mnt, const char *target) {
    if (syscall(SYS_move_mount, mnt, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH) < 0) die(target);
    close(mnt);
}

/*
 * A user namespace that maps the ids files are stored with (STORED..) onto the sandbox's own
 * range (BASE..), for idmapped mounts: every sandbox's disk and root filesystem are stored with one
 * canonical range and seen through its own, so no two sandboxes share a host identity and a fork
 * gets a range of its own without rewriting a single owner.
 */
static int idmap_namespace(unsigned long stored, unsigned long base, unsigned long count) {
    int hold[2];
    if (pipe2(hold, O_CLOEXEC) < 0) die("pipe");
    pid_t child = (pid_t)syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, NULL, NULL, NULL, NULL);
    if (child < 0) die("idmap namespace");
    if (child == 0) {
        char byte;
        close(hold[1]);
        ssize_t ignored = read(hold[0], &byte, 1); /* until the parent has what it needs */
        (void)ignored;
        _exit(0);
    }
    close(hold[0]);
    char path[64], map[96];
    snprintf(map, sizeof map, "%lu %lu %lu\n", stored, base, count);
    snprintf(path, sizeof path, "/proc/%d/uid_map", child);
    write_file(path, map);
    snprintf(path, sizeof path, "/proc/%d/gid_map", child);
    write_file(path, map);
    snprintf(path, sizeof path, "/proc/%d/ns/user", child);
    int userns = open(path, O_RDONLY | O_CLOEXEC);
    if (userns < 0) die(path);
    close(hold[1]);
    while (waitpid(child, NULL, 0) < 0 && errno == EINTR) {
    }
    return userns;
}

/* Make the detached mount ``mnt`` show its files' stored owners as the idmap namespace maps them. */
static void idmap_mount(int mnt, int userns) {
    if (userns < 0) return;
    struct mount_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.attr_set = MOUNT_ATTR_IDMAP;
    attr.userns_fd = (unsigned long long)userns;
    if (syscall(SYS_mount_setattr, mnt, "", AT_EMPTY_PATH, &attr, sizeof attr) < 0) die("idmapped mount");
}

static int clone_host_tree(const char *path) {
    int fd = (int)syscall(SYS_open_tree, AT_FDCWD, path, OPEN_TREE_CLONE | O_CLOEXEC);
    if (fd < 0) die(path);
    return fd;
}

/* -- the sandbox's disk: an ext4 image on a loop device, mounted in a private namespace ------ */

/* A free loop device backed by the open image; it detaches itself once its last user (the mount) goes. */
static int attach_loop(int file, const char *name, char *device, size_t size) {
    int control = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
    if (control < 0) die("/dev/loop-control");
    for (int attempt = 0; attempt < 32; attempt++) {
        int n = ioctl(control, LOOP_CTL_GET_FREE);
        if (n < 0) die("free loop device");
        snprintf(device, size, "/dev/loop%d", n);
        int loop = open(device, O_RDWR | O_CLOEXEC);
        if (loop < 0) die(device);
        struct loop_config config;
        memset(&config, 0, sizeof config);
        config.fd = (unsigned int)file;
        /* Direct I/O: the image's pages are not cached a second time below the disk's own, and
         * a stop has no dirty backing pages to flush (a kill went from ~100 ms to ~10 ms). */
        config.info.lo_flags = LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO;
        strncpy((char *)config.info.lo_file_name, name, LO_NAME_SIZE - 1);
        int configured = ioctl(loop, LOOP_CONFIGURE, &config);
        if (configured < 0 && errno == EINVAL) { /* a host filesystem without O_DIRECT */
            config.info.lo_flags = LO_FLAGS_AUTOCLEAR;
            configured = ioctl(loop, LOOP_CONFIGURE, &config);
        }
        if (configured == 0) {
            close(control);
            close(file);
            return loop;
        }
        if (errno != EBUSY) die("attach loop device");
        close(loop); /* another process took it between GET_FREE and CONFIGURE: ask again */
    }
    fail("no free loop device");
    return -1;
}

/*
 * Only in this process's own mount namespace, made private first (else a shared / would
 * propagate the mount to the host's). ext4 cannot be mounted from inside a user namespace, so
 * host root does it here, before the sandbox exists. nodev: the files are the sandbox's; setuid
 * stays (sudo inside). errors=remount-ro: a damaged disk stops taking writes, nothing more.
 * noinit_itable: no background zeroing of inode tables the image never wrote (it is sparse).
 */
static void mount_disk(int image, const char *target, int userns) {
    if (unshare(CLONE_NEWNS) < 0) die("mount namespace");
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) die("private mounts");
    char device[32];
    int loop = attach_loop(image, "sandbox-disk", device, sizeof device);
    int fs = fs_open("ext4");
    fs_set(fs, "source", device);
    fs_set(fs, "errors", "remount-ro");
    fs_set(fs, "noinit_itable", NULL);
    int mnt = fs_mount(fs, MOUNT_ATTR_NODEV);
    idmap_mount(mnt, userns);
    attach(mnt, target);
    close(loop); /* the mount holds the device now; autoclear frees it with the mount */
}

/* One name directly below a trusted directory, never a link: host root resolves nothing inside the disk. */
static int open_below(int dir, const char *name) {
    int fd = openat(dir, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) die(name);
    return fd;
}

/*
 * The disk store: an XFS image with reflinks, mounted detached (fsmount without move_mount), so
 * no mount table holds it and its only way in is the fd this sends. nodev, nosuid, noexec: it
 * holds image files only. No online discard (a discard per freed extent made deleting a
 * fragmented image take minutes): the server trims the store in batches instead.
 */
static int store(const char *image, int socket_fd) {
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0) die("pdeathsig");
    int file = open(image, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
    if (file < 0) die(image);
    char device[32];
    int loop = attach_loop(file, "sandbox-disk-store", device, sizeof device);
    int fs = fs_open("xfs");
    fs_set(fs, "source", device);
    int mnt = fs_mount(fs, MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC);
    close(loop);
    char byte = 's';
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    union {
        struct cmsghdr header;
        char space[CMSG_SPACE(sizeof(int))];
    } control;
    memset(&control, 0, sizeof control);
    struct msghdr message = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.space, .msg_controllen = sizeof control.space};
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&message);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cmsg), &mnt, sizeof(int));
    if (sendmsg(socket_fd, &message, 0) != 1) die("send the store");
    return 0;
}

/*
 * What `ps` shows of a process is its argv, in its own memory. The helper's options name host
 * paths and the sandbox's id, which neither a local user nor anything inside should read.
 */
static void set_title(int argc, char **argv, const char *title) {
    char *end = argv[argc - 1] + strlen(argv[argc - 1]);
    size_t room = (size_t)(end - argv[0]);
    memset(argv[0], 0, room);
    strncpy(argv[0], title, room);
}

/* -- boot ---------------------------------------------------------------------------------- */

struct boot {
    const char *lower, *lower_mount, *disk_mount, *merged, *hostname;
    unsigned long base, count, stored, shm_bytes;
    char *cgroups[MAX_CGROUPS];
    char *proc_views[MAX_PROC_VIEWS]; /* host files to show over /proc/<their name> */
    int ncgroups, nproc_views, ready_fd, disk_fd, commands_fd, argc;
    char **argv;
};

static int serve_commands(struct boot *b, pid_t init);

static const char *DEVICES[] = {"null", "zero", "full", "random", "urandom", "tty"};
#define NDEVICES (sizeof DEVICES / sizeof *DEVICES)

static void loopback_up(void) {
    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sock < 0) die("socket");
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strcpy(ifr.ifr_name, "lo");
    if (ioctl(sock, SIOCGIFFLAGS, &ifr) < 0) die("lo flags");
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(sock, SIOCSIFFLAGS, &ifr) < 0) die("lo up");
    close(sock);
}

static void write_hosts(const char *hostname) {
    /* After pivot_root: a link the sandbox planted resolves inside the sandbox, never the host. */
    mkdir("/etc", 0755);
    int fd = open("/etc/hosts", O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0) return; /* the sandbox's own business: it broke its /etc */
    dprintf(fd, "127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n", hostname);
    close(fd);
    fd = open("/etc/hostname", O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd >= 0) {
        dprintf(fd, "%s\n", hostname);
        close(fd);
    }
}

static void reap_forever(int ready_fd) {
    /* pid 1 keeps no descriptor of the host's: not even the log its errors went to. */
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null < 0) die("/dev/null");
    for (int fd = 0; fd < 3; fd++) dup2(null, fd);
    close(null);
    if (write(ready_fd, "ok\n", 3) != 3) _exit(125);
    close(ready_fd);
    sigset_t chld, none;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigemptyset(&none);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    for (;;) {
        while (waitpid(-1, NULL, WNOHANG) > 0) {
        }
        sigsuspend(&none);
    }
}

static void on_signal(int sig) { (void)sig; }

/*
 * What the host's /proc would tell about other sandboxes, it does not: the host's partitions and
 * diskstats list every sandbox's disk (a loop device each) and its I/O as it happens. A sandbox has
 * no block device of its own in its /dev (its disk is mounted for it), so it sees the empty tables
 * of a machine without one, on a read-only tmpfs of its own.
 */
static const char *const EMPTY_VIEWS[][2] = {{"partitions", "major minor  #blocks  name\n\n"}, {"diskstats", ""}};
#define NEMPTY_VIEWS (sizeof EMPTY_VIEWS / sizeof *EMPTY_VIEWS)

/* Over the fresh /proc: the host's views (`views`, clones of `paths`), then the empty tables. */
static void mount_proc_views(int *views, char **paths, int nviews) {
    char target[96];
    for (int i = 0; i < nviews; i++) {
        if (views[i] < 0) continue;
        const char *slash = strrchr(paths[i], '/');
        snprintf(target, sizeof target, "/proc/%s", slash ? slash + 1 : paths[i]);
        attach(views[i], target);
    }
    int fs = fs_open("tmpfs");
    fs_set(fs, "size", "64k");
    fs_set(fs, "mode", "0555");
    int tables = fs_mount(fs, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC);
    for (size_t i = 0; i < NEMPTY_VIEWS; i++) {
        int fd = openat(tables, EMPTY_VIEWS[i][0], O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0444);
        if (fd < 0) die(EMPTY_VIEWS[i][0]);
        size_t len = strlen(EMPTY_VIEWS[i][1]);
        if (write(fd, EMPTY_VIEWS[i][1], len) != (ssize_t)len) die(EMPTY_VIEWS[i][0]);
        close(fd);
    }
    struct mount_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.attr_set = MOUNT_ATTR_RDONLY;
    if (syscall(SYS_mount_setattr, tables, "", AT_EMPTY_PATH, &attr, sizeof attr) < 0) die("read-only views");
    for (size_t i = 0; i < NEMPTY_VIEWS; i++) {
        int view = (int)syscall(SYS_open_tree, tables, EMPTY_VIEWS[i][0], OPEN_TREE_CLONE | O_CLOEXEC);
        if (view < 0) die(EMPTY_VIEWS[i][0]);
        snprintf(target, sizeof target, "/proc/%s", EMPTY_VIEWS[i][0]);
        attach(view, target);
    }
    close(tables);
}

/*
 * pid 1 moves into namespaces of its own below the sandbox's user namespace, and every process
 * after it enters there. Mounts copied into a less privileged user namespace are locked (the
 * kernel's MNT_LOCKED): no root inside can unmount the /proc views, or any other mount made above,
 * to see what they cover, and since no mount of /proc in its namespace is then fully visible, it
 * cannot mount a fresh procfs either. Its ids map one to one onto the sandbox's (0..COUNT-1), so
 * every owner stays what it was; its mount, UTS, IPC and cgroup namespaces are its own, so root
 * inside still mounts, names its host and sets up cgroups as it would on a VM. A fork that stays
 * in the sandbox's namespace writes the map (a process cannot map more than its own id into a
 * namespace it has just entered).
 */
static void move_inward(unsigned long count) {
    int go[2];
    if (pipe2(go, O_CLOEXEC) < 0) die("pipe");
    pid_t mapper = fork();
    if (mapper < 0) die("fork");
    if (mapper == 0) {
        char token, path[64], map[64];
        close(go[1]);
        if (read(go[0], &token, 1) != 1) _exit(125);
        snprintf(map, sizeof map, "0 0 %lu\n", count);
        snprintf(path, sizeof path, "/proc/%d/uid_map", getppid());
        write_file(path, map);
        snprintf(path, sizeof path, "/proc/%d/gid_map", getppid());
        write_file(path, map);
        _exit(0);
    }
    close(go[0]);
    if (unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWCGROUP) < 0)
        die("inner namespaces");
    if (write(go[1], "g", 1) != 1) die("map the inner namespace");
    close(go[1]);
    int status;
    while (waitpid(mapper, &status, 0) < 0) {
        if (errno != EINTR) die("wait");
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) fail("mapping the inner namespace failed");
}

static void boot_child(struct boot *b, int go_fd, int ready_fd) {
    char token;
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0) die("pdeathsig");
    if (read(go_fd, &token, 1) != 1) _exit(125); /* the parent failed to map our ids */
    close(go_fd);

    /* Host paths are opened while we are still host root, then we become the sandbox's root. */
    int lower = open_dir(b->lower_mount), disk_root = open_dir(b->disk_mount), merged = open_dir(b->merged);
    int upper = open_below(disk_root, "upper"), work = open_below(disk_root, "work");
    close(disk_root);
    int devices[NDEVICES];
    for (size_t i = 0; i < NDEVICES; i++) {
        char path[64];
        snprintf(path, sizeof path, "/dev/%s", DEVICES[i]);
        devices[i] = clone_host_tree(path);
    }
    /* The views are information, not limits: a sandbox boots without one lxcfs cannot give. */
    int views[MAX_PROC_VIEWS];
    for (int i = 0; i < b->nproc_views; i++) {
        views[i] = (int)syscall(SYS_open_tree, AT_FDCWD, b->proc_views[i], OPEN_TREE_CLONE | O_CLOEXEC);
        if (views[i] < 0) fprintf(stderr, "sandbox-helper: %s: %s\n", b->proc_views[i], strerror(errno));
    }
    if (setgroups(0, NULL) < 0) die("setgroups");
    if (setresgid(0, 0, 0) < 0) die("setresgid");
    if (setresuid(0, 0, 0) < 0) die("setresuid");
    /* The id change cleared the parent-death signal: armed again, or a killed server would leave
     * the sandbox running. A parent that died before this line is seen at the ready write. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0) die("pdeathsig");
    /* /proc/self/fd/N must stay ours to resolve after the id change; nothing else runs yet. */
    if (prctl(PR_SET_DUMPABLE, 1) < 0) die("dumpable");
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) die("private mounts");

    char option[64];
    int fs = fs_open("overlay");
    snprintf(option, sizeof option, "/proc/self/fd/%d", lower);
    fs_set(fs, "lowerdir", option);
    snprintf(option, sizeof option, "/proc/self/fd/%d", upper);
    fs_set(fs, "upperdir", option);
    snprintf(option, sizeof option, "/proc/self/fd/%d", work);
    fs_set(fs, "workdir", option);
    fs_set(fs, "userxattr", NULL);
    int root = fs_mount(fs, 0);
    if (syscall(SYS_move_mount, root, "", merged, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) < 0)
        die("mount root");
    if (fchdir(root) < 0) die("chdir root");
    close(root);
    close(lower);
    close(upper);
    close(work);
    close(merged);
    /* /proc is made while the host's is still visible (the kernel wants one in the namespace). */
    int proc = fs_mount(fs_open("proc"), MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC);

    if (syscall(SYS_pivot_root, ".", ".") < 0) die("pivot_root");
    if (umount2(".", MNT_DETACH) < 0) die("detach host root");
    if (chdir("/") < 0) die("chdir /");
    /* From here on every path is the sandbox's own. */
    mkdir("/proc", 0555);
    attach(proc, "/proc");
    mount_proc_views(views, b->proc_views, b->nproc_views);
    mkdir("/dev", 0755);
    if (mount("tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=1m,nr_inodes=64") < 0) die("/dev");
    for (size_t i = 0; i < NDEVICES; i++) {
        char path[64];
        snprintf(path, sizeof path, "/dev/%s", DEVICES[i]);
        int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0666);
        if (fd < 0) die(path);
        close(fd);
        attach(devices[i], path);
    }
    mkdir("/dev/pts", 0755);
    if (mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5") < 0)
        die("/dev/pts");
    mkdir("/dev/shm", 01777);
    snprintf(option, sizeof option, "mode=1777,size=%lu", b->shm_bytes);
    if (mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, option) < 0) die("/dev/shm");
    if (symlink("pts/ptmx", "/dev/ptmx") < 0 || symlink("/proc/self/fd", "/dev/fd") < 0 ||
        symlink("/proc/self/fd/0", "/dev/stdin") < 0 || symlink("/proc/self/fd/1", "/dev/stdout") < 0 ||
        symlink("/proc/self/fd/2", "/dev/stderr") < 0)
        die("/dev links");
    mkdir("/run", 0755);
    if (mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64m") < 0) die("/run");
    if (sethostname(b->hostname, strlen(b->hostname)) < 0) die("sethostname");
    write_hosts(b->hostname);
    move_inward(b->count);
    set_title(b->argc, b->argv, "init"); /* the options are used up: nothing of the host shows */
    if (prctl(PR_SET_DUMPABLE, 0) < 0) die("dumpable");

    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_signal;
    sigaction(SIGCHLD, &action, NULL);
    reap_forever(ready_fd);
}

static void map_ids(pid_t child, unsigned long base, unsigned long count) {
    char path[64], map[64];
    snprintf(map, sizeof map, "0 %lu %lu\n", base, count);
    snprintf(path, sizeof path, "/proc/%d/uid_map", child);
    write_file(path, map);
    snprintf(path, sizeof path, "/proc/%d/gid_map", child);
    write_file(path, map);
}

static int boot(struct boot *b) {
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0) die("pdeathsig");
    /* Everything below, our own bookkeeping included, counts against the sandbox's limits. */
    join_cgroups(b->cgroups, b->ncgroups);
    /* Owned by the host's user namespace: the sandbox's root gets no say over its network. */
    if (unshare(CLONE_NEWNET) < 0) die("network namespace");
    loopback_up();
    write_file("/proc/sys/net/ipv4/ip_unprivileged_port_start", "0\n");
    write_file("/proc/sys/net/ipv4/ping_group_range", "0 2147483647\n");
    /* The server fences the network while the rest boots: it reads this namespace through our pid. */
    dprintf(b->ready_fd, "net\n");
    /* The child's mount namespace starts as a copy of this one: it finds the disk mounted. */
    /* Files are stored with the canonical range and seen through the sandbox's own. */
    int userns = b->stored != b->base ? idmap_namespace(b->stored, b->base, b->count) : -1;
    mount_disk(b->disk_fd, b->disk_mount, userns);
    /* Attached here, in this private namespace, so the child's copy of it is a mount of its own
     * (overlayfs takes no layer from another namespace). */
    int lower = clone_host_tree(b->lower);
    idmap_mount(lower, userns);
    attach(lower, b->lower_mount);
    if (userns >= 0) close(userns);

    int go[2], ready[2];
    if (pipe2(go, O_CLOEXEC) < 0 || pipe2(ready, O_CLOEXEC) < 0) die("pipe");
    int flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWCGROUP;
    pid_t child = (pid_t)syscall(SYS_clone, flags | SIGCHLD, NULL, NULL, NULL, NULL);
    if (child < 0) die("clone");
    if (child == 0) {
        close(go[1]);
        close(ready[0]);
        /* pid 1 keeps nothing of the server's: not its command channel, not its ready pipe. */
        if (b->commands_fd >= 0) close(b->commands_fd);
        close(b->ready_fd);
        boot_child(b, go[0], ready[1]);
    }
    set_title(b->argc, b->argv, "sandbox-helper boot");
    close(go[0]);
    close(ready[1]);
    map_ids(child, b->base, b->count);
    if (write(go[1], "g", 1) != 1) die("start child");
    close(go[1]);
    char answer[4];
    ssize_t got = read(ready[0], answer, sizeof answer);
    close(ready[0]);
    if (got != 3) {
        int status;
        waitpid(child, &status, 0);
        fail("the sandbox failed to start");
    }
    dprintf(b->ready_fd, "%d\n", child);
    close(b->ready_fd);
    if (b->commands_fd >= 0) return serve_commands(b, child);
    int status;
    while (waitpid(child, &status, 0) < 0) {
        if (errno != EINTR) die("wait");
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* -- enter --------------------------------------------------------------------------------- */

#define ARCH_NR AUDIT_ARCH_X86_64
#ifndef __x86_64__
#error "sandbox-helper's seccomp filter is written for x86_64"
#endif

/* No nested user namespaces: root inside cannot gain a fresh set of capabilities or remap ids. */
static void deny_user_namespaces(void) {
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ARCH_NR, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        /* x32 numbers (nr | 0x40000000) would slip past the comparisons below on a kernel that
         * has the x32 ABI on: refused whole, nothing here is an x32 program. */
        BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, __X32_SYSCALL_BIT, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_clone3, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS), /* libc falls back to clone */
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_unshare, 1, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_clone, 0, 3),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])),
        BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, CLONE_NEWUSER, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog program = {.len = sizeof filter / sizeof *filter, .filter = filter};
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &program) < 0) die("seccomp");
}

static int parse_groups(const char *text, gid_t *groups, int max) {
    int n = 0;
    while (text && *text && n < max) {
        char *end;
        groups[n++] = (gid_t)strtoul(text, &end, 10);
        text = *end == ',' ? end + 1 : NULL;
    }
    return n;
}

static volatile pid_t command_pid;

static void forward(int sig) {
    if (command_pid > 0) kill(command_pid, sig);
}

struct enter_options {
    int pidfd;
    long uid, gid;
    const char *groups, *cwd;
    char *cgroups[MAX_CGROUPS];
    int ncgroups;
    char **argv;
};

static int enter(struct enter_options *o) {
    /* Nobody inside may ptrace this process: it is still host root by id until it forks. */
    if (prctl(PR_SET_DUMPABLE, 0) < 0) die("dumpable");
    join_cgroups(o->cgroups, o->ncgroups);
    int all = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNET | CLONE_NEWCGROUP;
    if (setns(o->pidfd, all) < 0) die("enter the sandbox");
    close(o->pidfd);
    pid_t child = fork();
    if (child < 0) die("fork");
    if (child == 0) {
        gid_t groups[32];
        int ngroups = parse_groups(o->groups, groups, 32);
        deny_user_namespaces();
        if (setgroups((size_t)ngroups, groups) < 0) die("setgroups");
        if (setresgid((gid_t)o->gid, (gid_t)o->gid, (gid_t)o->gid) < 0) die("setresgid");
        if (setresuid((uid_t)o->uid, (uid_t)o->uid, (uid_t)o->uid) < 0) die("setresuid");
        if (chdir(o->cwd ? o->cwd : "/") < 0) {
            fprintf(stderr, "cd: %s: %s\n", o->cwd, strerror(errno));
            _exit(1);
        }
        signal(SIGPIPE, SIG_DFL);
        execvp(o->argv[0], o->argv);
        fprintf(stderr, "exec %s: %s\n", o->argv[0], strerror(errno));
        _exit(errno == ENOENT ? 127 : 126);
    }
    command_pid = child;
    /* Only the command and what it starts hold its pipes: end of file means they are done. */
    for (int fd = 0; fd < 3; fd++) close(fd);
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = forward;
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGINT, &action, NULL);
    sigaction(SIGHUP, &action, NULL);
    int status;
    while (waitpid(child, &status, 0) < 0) {
        if (errno != EINTR) die("wait");
    }
    if (WIFSIGNALED(status)) {
        signal(WTERMSIG(status), SIG_DFL);
        kill(getpid(), WTERMSIG(status));
        return 128 + WTERMSIG(status);
    }
    return WEXITSTATUS(status);
}

static const char *value(int argc, char **argv, int *i) {
    if (*i + 1 >= argc) fail("missing value");
    return argv[++*i];
}

/* enter's options up to `--`, then ARGV; exits with a message on a bad one. */
static void parse_enter(int argc, char **argv, struct enter_options *o) {
    memset(o, 0, sizeof *o);
    o->pidfd = -1;
    o->uid = o->gid = -1;
    int i = 0;
    for (; i < argc && strcmp(argv[i], "--") != 0; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--pidfd") == 0) o->pidfd = atoi(value(argc, argv, &i));
        else if (strcmp(arg, "--uid") == 0) o->uid = atol(value(argc, argv, &i));
        else if (strcmp(arg, "--gid") == 0) o->gid = atol(value(argc, argv, &i));
        else if (strcmp(arg, "--groups") == 0) o->groups = value(argc, argv, &i);
        else if (strcmp(arg, "--cwd") == 0) o->cwd = value(argc, argv, &i);
        else if (strcmp(arg, "--cgroup-procs") == 0) {
            if (o->ncgroups == MAX_CGROUPS) fail("too many cgroups");
            o->cgroups[o->ncgroups++] = (char *)value(argc, argv, &i);
        } else fail("unknown enter option");
    }
    if (o->uid < 0 || o->gid < 0 || i + 1 >= argc) fail("enter needs --uid --gid -- ARGV");
    o->argv = argv + i + 1;
}

/* -- commands started by the boot process ------------------------------------------------- */

/* One datagram: the counts, then the strings (an exec's arguments and environment fit). */
#define COMMAND_BYTES (128 * 1024)
#define COMMAND_FDS 4 /* stdin, stdout, stderr, status socket */

struct command {
    pid_t pid;
    int status_fd;
};

static struct command *commands;
static size_t ncommands, commands_room;

static void send_status(int fd, const void *data, size_t size, int pidfd) {
    struct iovec iov = {.iov_base = (void *)data, .iov_len = size};
    union {
        struct cmsghdr header;
        char space[CMSG_SPACE(sizeof(int))];
    } control;
    memset(&control, 0, sizeof control);
    struct msghdr message = {.msg_iov = &iov, .msg_iovlen = 1};
    if (pidfd >= 0) {
        message.msg_control = control.space;
        message.msg_controllen = sizeof control.space;
        struct cmsghdr *cmsg = CMSG_FIRSTHDR(&message);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cmsg), &pidfd, sizeof(int));
    }
    /* A server that gave up on the command has closed its end: nothing to tell, nothing to die of. */
    ssize_t ignored = sendmsg(fd, &message, MSG_NOSIGNAL | MSG_DONTWAIT);
    (void)ignored;
}

static void refuse(int status_fd, int error) {
    int32_t started[2] = {-1, error};
    send_status(status_fd, started, sizeof started, -1);
    close(status_fd);
}

/* Split a request into the enter options and the environment (both NULL-terminated arrays). */
static int parse_request(char *data, size_t size, char ***options, int *noptions, char ***env) {
    uint32_t counts[2];
    if (size < sizeof counts) return -1;
    memcpy(counts, data, sizeof counts);
    if (counts[0] == 0 || counts[0] > COMMAND_BYTES || counts[1] > COMMAND_BYTES) return -1;
    char **strings = calloc((size_t)counts[0] + counts[1] + 2, sizeof *strings);
    if (!strings) return -1;
    char *at = data + sizeof counts, *end = data + size;
    for (uint32_t n = 0; n < counts[0] + counts[1]; n++) {
        char *nul = at < end ? memchr(at, 0, (size_t)(end - at)) : NULL;
        if (!nul) {
            free(strings);
            return -1;
        }
        strings[n < counts[0] ? n : n + 1] = at;
        at = nul + 1;
    }
    *options = strings;
    *noptions = (int)counts[0];
    *env = strings + counts[0] + 1;
    return 0;
}

/*
 * The fork that becomes the command's carrier: what `enter` is, without its exec and its cgroup
 * attach. It gets nothing of the boot process but the way in (the init's pidfd): no other
 * descriptor, no blocked signal, no host environment.
 */
static void become_enter(struct boot *b, int init_pidfd, int *fds, char **options, int noptions, char **env) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGCHLD, SIG_DFL);
    if (setsid() < 0) die("setsid"); /* its own process group: the server kills the command's as one */
    for (int fd = 0; fd < 3; fd++)
        if (dup2(fds[fd], fd) < 0) die("dup2");
    if (dup2(init_pidfd, 3) < 0) die("dup2");
    syscall(SYS_close_range, 4U, ~0U, 0U);
    set_title(b->argc, b->argv, "sandbox-helper enter");
    environ = env;
    struct enter_options o;
    parse_enter(noptions, options, &o);
    o.pidfd = 3;
    o.ncgroups = 0; /* a fork of the boot process is in the sandbox's cgroups already */
    _exit(enter(&o));
}

/* Start the command the next request asks for; 0 once the server has let go of the channel. */
static int start_command(struct boot *b, int channel, int init_pidfd, char *request) {
    int fds[COMMAND_FDS];
    union {
        struct cmsghdr header;
        char space[CMSG_SPACE(sizeof fds)];
    } control;
    struct iovec iov = {.iov_base = request, .iov_len = COMMAND_BYTES};
    struct msghdr message = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.space,
                             .msg_controllen = sizeof control.space};
    ssize_t got = recvmsg(channel, &message, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (got < 0) return errno == EAGAIN || errno == EINTR;
    if (got == 0) return 0;
    int nfds = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&message); c; c = CMSG_NXTHDR(&message, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        for (int k = 0; k < count; k++) {
            int fd;
            memcpy(&fd, CMSG_DATA(c) + k * sizeof(int), sizeof fd);
            if (nfds < COMMAND_FDS) fds[nfds++] = fd;
            else close(fd);
        }
    }
    if (nfds != COMMAND_FDS || (message.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
        for (int k = 0; k < nfds; k++) close(fds[k]);
        return 1; /* not the server's kind of request: its status socket (if any) hears nothing but EOF */
    }
    int status_fd = fds[3];
    char **options, **env;
    int noptions;
    if (parse_request(request, (size_t)got, &options, &noptions, &env) < 0) {
        for (int k = 0; k < 3; k++) close(fds[k]);
        refuse(status_fd, EINVAL);
        return 1;
    }
    if (ncommands == commands_room) {
        size_t room = commands_room ? commands_room * 2 : 16;
        struct command *grown = realloc(commands, room * sizeof *grown);
        if (!grown) {
            free(options);
            for (int k = 0; k < 3; k++) close(fds[k]);
            refuse(status_fd, ENOMEM);
            return 1;
        }
        commands = grown;
        commands_room = room;
    }
    pid_t child = fork();
    if (child == 0) become_enter(b, init_pidfd, fds, options, noptions, env);
    int error = errno;
    free(options);
    for (int k = 0; k < 3; k++) close(fds[k]);
    if (child < 0) {
        refuse(status_fd, error);
        return 1;
    }
    /* Not reaped before this line: the pidfd is this child's, whatever pid numbers do later. */
    int pidfd = (int)syscall(SYS_pidfd_open, child, 0);
    int32_t started[2] = {child, 0};
    send_status(status_fd, started, sizeof started, pidfd);
    if (pidfd >= 0) close(pidfd);
    commands[ncommands++] = (struct command){child, status_fd};
    return 1;
}

static void command_exited(pid_t pid, int status) {
    for (size_t k = 0; k < ncommands; k++) {
        if (commands[k].pid != pid) continue;
        int32_t reported = status;
        send_status(commands[k].status_fd, &reported, sizeof reported, -1);
        close(commands[k].status_fd);
        commands[k] = commands[--ncommands];
        return;
    }
}

/* Wait for pid 1 as `boot` does, starting commands meanwhile; their carriers go with the sandbox. */
static int serve_commands(struct boot *b, pid_t init) {
    int channel = b->commands_fd;
    if (fcntl(channel, F_SETFD, FD_CLOEXEC) < 0) die("command channel");
    int init_pidfd = (int)syscall(SYS_pidfd_open, init, 0);
    if (init_pidfd < 0) die("pidfd");
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    int signals = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    if (signals < 0) die("signalfd");
    char *request = malloc(COMMAND_BYTES);
    if (!request) die("request buffer");
    for (;;) {
        struct pollfd ready[2] = {{.fd = signals, .events = POLLIN}, {.fd = channel, .events = POLLIN}};
        if (poll(ready, channel >= 0 ? 2 : 1, -1) < 0) {
            if (errno == EINTR) continue;
            die("poll");
        }
        if (ready[0].revents) {
            struct signalfd_siginfo info;
            while (read(signals, &info, sizeof info) > 0) {
            }
            pid_t pid;
            int status;
            while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
                if (pid != init) {
                    command_exited(pid, status);
                    continue;
                }
                /* The sandbox is gone: so are its commands' carriers, before this process. */
                for (size_t k = 0; k < ncommands; k++) kill(commands[k].pid, SIGKILL);
                while (ncommands > 0) {
                    int carried;
                    pid_t gone = waitpid(-1, &carried, 0);
                    if (gone < 0 && errno != EINTR) break;
                    if (gone > 0) command_exited(gone, carried);
                }
                return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            }
        }
        if (channel >= 0 && ready[1].revents && !start_command(b, channel, init_pidfd, request)) {
            close(channel); /* the server let go: no more commands, the sandbox lives on */
            channel = -1;
        }
    }
}

/* -- arguments ----------------------------------------------------------------------------- */

int main(int argc, char **argv) {
    if (argc < 2) fail("usage: sandbox-helper boot|enter|store ...");
    if (strcmp(argv[1], "boot") == 0) {
        struct boot b = {.shm_bytes = 64UL << 20, .ready_fd = -1, .disk_fd = -1, .commands_fd = -1, .hostname = "sandbox",
                         .argc = argc, .argv = argv};
        for (int i = 2; i < argc; i++) {
            const char *arg = argv[i];
            if (strcmp(arg, "--lower") == 0) b.lower = value(argc, argv, &i);
            else if (strcmp(arg, "--disk-fd") == 0) b.disk_fd = atoi(value(argc, argv, &i));
            else if (strcmp(arg, "--disk-mount") == 0) b.disk_mount = value(argc, argv, &i);
            else if (strcmp(arg, "--merged") == 0) b.merged = value(argc, argv, &i);
            else if (strcmp(arg, "--hostname") == 0) b.hostname = value(argc, argv, &i);
            else if (strcmp(arg, "--shm-bytes") == 0) b.shm_bytes = strtoul(value(argc, argv, &i), NULL, 10);
            else if (strcmp(arg, "--ready-fd") == 0) b.ready_fd = atoi(value(argc, argv, &i));
            else if (strcmp(arg, "--commands-fd") == 0) b.commands_fd = atoi(value(argc, argv, &i));
            else if (strcmp(arg, "--lower-mount") == 0) b.lower_mount = value(argc, argv, &i);
            else if (strcmp(arg, "--stored-ids") == 0) b.stored = strtoul(value(argc, argv, &i), NULL, 10);
            else if (strcmp(arg, "--map") == 0) {
                if (sscanf(value(argc, argv, &i), "%lu:%lu", &b.base, &b.count) != 2) fail("bad --map");
            } else if (strcmp(arg, "--cgroup-procs") == 0) {
                if (b.ncgroups == MAX_CGROUPS) fail("too many cgroups");
                b.cgroups[b.ncgroups++] = (char *)value(argc, argv, &i);
            } else if (strcmp(arg, "--proc-view") == 0) {
                if (b.nproc_views == MAX_PROC_VIEWS) fail("too many /proc views");
                b.proc_views[b.nproc_views++] = (char *)value(argc, argv, &i);
            } else fail("unknown boot option");
        }
        if (!b.lower || !b.lower_mount || b.disk_fd < 0 || !b.disk_mount || !b.merged || b.ready_fd < 0 || b.base == 0 || b.count == 0)
            fail("boot needs --lower --lower-mount --disk-fd --disk-mount --merged --map --ready-fd");
        if (b.stored == 0) b.stored = b.base;
        return boot(&b);
    }
    if (strcmp(argv[1], "enter") == 0) {
        struct enter_options o;
        parse_enter(argc - 2, argv + 2, &o);
        if (o.pidfd < 0) fail("enter needs --pidfd --uid --gid -- ARGV");
        return enter(&o);
    }
    if (strcmp(argv[1], "store") == 0) {
        const char *image = NULL;
        int socket_fd = -1;
        for (int i = 2; i < argc; i++) {
            if (strcmp(argv[i], "--image") == 0) image = value(argc, argv, &i);
            else if (strcmp(argv[i], "--send-fd") == 0) socket_fd = atoi(value(argc, argv, &i));
            else fail("unknown store option");
        }
        if (!image || socket_fd < 0) fail("store needs --image --send-fd");
        return store(image, socket_fd);
    }
    fail("usage: sandbox-helper boot|enter|store ...");
    return 125;
}
