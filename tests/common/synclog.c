/*
 * An LD_PRELOAD shim for power-loss tests (tests/it/durability.rs).
 *
 * It records, for every fsync and fdatasync that succeeds, the file's inode and its size as it
 * was before the call, one "sync <inode> <size>" line per call appended to the file named by
 * PLAIT_SYNC_LOG; and "forget <inode>" when a path is unlinked, so that a reused inode does not
 * inherit an old record. After the process is killed, the test truncates every file to the last
 * size synced under its inode and deletes files never synced: what the disk would hold after a
 * power cut that lost everything not fsynced. (Directory entries are not modelled: a synced
 * file is taken to exist.)
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int log_fd = -2;

static void record(const char *line, int length) {
    if (log_fd == -2) {
        const char *path = getenv("PLAIT_SYNC_LOG");
        log_fd = path ? open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644) : -1;
    }
    if (log_fd >= 0 && write(log_fd, line, length) != length) {
        abort();
    }
}

static int synced(int fd, int (*real)(int)) {
    struct stat before;
    int have = fstat(fd, &before) == 0 && S_ISREG(before.st_mode);
    int result = real(fd);
    if (result == 0 && have) {
        char line[96];
        int length = snprintf(line, sizeof line, "sync %llu %lld\n",
                              (unsigned long long)before.st_ino, (long long)before.st_size);
        record(line, length);
    }
    return result;
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    return synced(fd, real);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    return synced(fd, real);
}

/* The inode a path names now, or 0. */
static unsigned long long inode_of(int dirfd, const char *path) {
    struct stat st;
    if (fstatat(dirfd, path, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode)) {
        return (unsigned long long)st.st_ino;
    }
    return 0;
}

static void forget(unsigned long long inode) {
    if (inode != 0) {
        char line[64];
        int length = snprintf(line, sizeof line, "forget %llu\n", inode);
        record(line, length);
    }
}

int unlink(const char *path) {
    static int (*real)(const char *);
    if (!real) real = (int (*)(const char *))dlsym(RTLD_NEXT, "unlink");
    unsigned long long inode = inode_of(AT_FDCWD, path);
    int result = real(path);
    if (result == 0) forget(inode);
    return result;
}

int unlinkat(int dirfd, const char *path, int flags) {
    static int (*real)(int, const char *, int);
    if (!real) real = (int (*)(int, const char *, int))dlsym(RTLD_NEXT, "unlinkat");
    unsigned long long inode = inode_of(dirfd, path);
    int result = real(dirfd, path, flags);
    if (result == 0) forget(inode);
    return result;
}

/* A rename over an existing file frees the replaced file's inode. */
int rename(const char *from, const char *to) {
    static int (*real)(const char *, const char *);
    if (!real) real = (int (*)(const char *, const char *))dlsym(RTLD_NEXT, "rename");
    unsigned long long replaced = inode_of(AT_FDCWD, to);
    unsigned long long moved = inode_of(AT_FDCWD, from);
    int result = real(from, to);
    if (result == 0 && replaced != moved) forget(replaced);
    return result;
}
