/* locker: take an fcntl(2) byte-range lock in the guest and report what happened.
 *
 *   locker FILE r|w START LEN wait|try HOLD    lock (F_SETLKW or F_SETLK), print "locked <seconds waited>"
 *                                               or "denied <errno name>", hold HOLD seconds, exit (unlocks)
 *   locker FILE test r|w START LEN             F_GETLK: print "free" or "held r|w START LEN"
 *   locker FILE flock s|x wait|try HOLD        flock(2) (the NFS client sends it as a whole-file NLM lock)
 *
 * Built statically on the host when the guest image is made (tests/integration/kernel/vm.py).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc == 6 && strcmp(argv[2], "test") == 0) {
        int fd = open(argv[1], O_RDWR);
        if (fd < 0) { perror("open"); return 2; }
        struct flock fl = { .l_type = argv[3][0] == 'w' ? F_WRLCK : F_RDLCK, .l_whence = SEEK_SET,
                            .l_start = atoll(argv[4]), .l_len = atoll(argv[5]) };
        if (fcntl(fd, F_GETLK, &fl) != 0) { printf("error %s\n", strerror(errno)); return 1; }
        if (fl.l_type == F_UNLCK) printf("free\n");
        else printf("held %c %lld %lld\n", fl.l_type == F_WRLCK ? 'w' : 'r', (long long)fl.l_start,
                    (long long)fl.l_len);
        return 0;
    }
    if (argc == 6 && strcmp(argv[2], "flock") == 0) {
        int fd = open(argv[1], O_RDONLY);
        if (fd < 0) { perror("open"); return 2; }
        int op = (argv[3][0] == 'x' ? LOCK_EX : LOCK_SH) | (strcmp(argv[4], "try") == 0 ? LOCK_NB : 0);
        double start = now();
        if (flock(fd, op) != 0) {
            int e = errno;
            printf("denied %s %.1f\n", e == EWOULDBLOCK ? "EAGAIN" : strerror(e), now() - start);
            return 1;
        }
        printf("locked %.1f\n", now() - start);
        fflush(stdout);
        sleep(atoi(argv[5]));
        return 0;
    }
    if (argc != 7) {
        fprintf(stderr, "usage: locker FILE r|w START LEN wait|try HOLD | locker FILE test r|w START LEN\n");
        return 2;
    }
    int exclusive = argv[2][0] == 'w';
    int fd = open(argv[1], exclusive ? O_RDWR : O_RDONLY);
    if (fd < 0) { perror("open"); return 2; }
    struct flock fl = { .l_type = exclusive ? F_WRLCK : F_RDLCK, .l_whence = SEEK_SET,
                        .l_start = atoll(argv[3]), .l_len = atoll(argv[4]) };
    double start = now();
    if (fcntl(fd, strcmp(argv[5], "wait") == 0 ? F_SETLKW : F_SETLK, &fl) != 0) {
        int e = errno;
        printf("denied %s %.1f\n", e == EAGAIN ? "EAGAIN" : e == EACCES ? "EACCES" : e == ENOLCK ? "ENOLCK"
               : strerror(e), now() - start);
        fflush(stdout);
        return 1;
    }
    printf("locked %.1f\n", now() - start);
    fflush(stdout);
    sleep(atoi(argv[6]));
    close(fd);
    return 0;
}
