/* A simulated Raspberry Pi Zero 2 W for hzeller's rpi-rgb-led-matrix (module `rgbmatrix`).
 *
 * LD_PRELOAD this into a process that uses the real library, and the library starts and runs
 * its refresh thread on a machine without a Pi or a panel:
 *
 * - /proc/cpuinfo says "Revision : 902120" (a Pi Zero 2 W; lib/gpio.cc reads cpuinfo first
 *   and /proc/device-tree/system/linux,revision only when cpuinfo has no revision, so both are
 *   served), /proc/device-tree/model says "Raspberry Pi Zero 2 W Rev 1.0".
 * - /dev/gpiomem exists and is memory: the library maps its GPIO block and writes the pins
 *   into it. /dev/mem cannot be opened (EACCES, as for a non-root user on a Pi), so the
 *   library falls back from the 1 MHz timer and the PWM pin pulser, exactly as a Pi without
 *   /dev/mem does. LOOP_SHIM_DEVMEM=enoent makes /dev/mem missing instead, and
 *   LOOP_SHIM_DEVMEM=root makes it memory too (a root Pi): the GPIO, 1 MHz timer, PWM and
 *   clock blocks then exist, the timer ticks (a shim thread moves it every 250 us, the
 *   refresh thread's calls in between) and
 *   the PWM status always reads "FIFO empty", so the hardware pulser of the mappings with
 *   output-enable on GPIO 18 or 12 runs.
 * - /proc/modules is LOOP_SHIM_MODULES (default: a stock Raspberry Pi OS list with the
 *   snd_bcm2835 sound module loaded), /sys/devices/system/cpu/isolated is empty.
 * - Real-time priority and CPU affinity requests (pthread_setschedparam, sched_setscheduler,
 *   sched_setparam, pthread_setaffinity_np, sched_setaffinity) succeed without doing
 *   anything, so the refresh thread stays an ordinary thread; the library's writes to
 *   /proc/sys/kernel/sched_rt_runtime_us and cpu3's scaling_governor go to /dev/null (as
 *   root the library would change the host's kernel settings). daemon() does not fork.
 * - LOOP_SHIM_REFRESH_HZ (default 0 = no cap) caps the refresh rate: the refresh thread
 *   sleeps after a frame until its slot comes. LOOP_SHIM_REFRESH_NICE (default 10) is the
 *   nice value of the refresh thread, so it yields to the tests on a shared machine.
 * - The shim takes LD_PRELOAD and LOOP_SHIM_STATE out of the environment at start, so the
 *   process's children run on this machine and never truncate the state file of their parent
 *   (LOOP_SHIM_INHERIT=1 keeps them).
 *
 * Observation: LOOP_SHIM_STATE names a file (created, 5 pages) shared with the process:
 * page 0 holds the counters below (little-endian uint64, index = enum counter), page 1 the
 * GPIO register block the library writes (GPFSEL0..5 at 0x00: which pins are outputs; GPSET0
 * at 0x1c, GPCLR0 at 0x28: last words written; GPLEV0 at 0x34: what the library reads as
 * input, writable by a test), pages 2..4 the timer, PWM and clock blocks of a root Pi.
 *
 * Faults: LOOP_SHIM_FAULT_FILE names a file whose first word steers the simulated Pi:
 *   nogpio       /dev/gpiomem cannot be opened (EACCES): read when the library opens it,
 *                i.e. at RGBMatrix(); the library then prints "Must run as root..." and
 *                returns a NULL matrix.
 *   hang         the refresh thread stops after its current frame until the word changes:
 *                SwapOnVSync never returns (what a stuck PWM/sound-module conflict does).
 *   slow MS      every refresh takes MS milliseconds longer: SwapOnVSync takes that long.
 *   segv         the refresh thread dereferences NULL: the process dies of SIGSEGV.
 *   segv-swap    the next SwapOnVSync caller dereferences NULL (the crash is in the
 *                Python thread that called SwapOnVSync, with its stack for faulthandler).
 *   abort        the refresh thread calls abort(): SIGABRT, like the library's own abort()s.
 *   segv-init    the library's mmap of a GPIO block (inside RGBMatrix(), in the thread that
 *                called it) dereferences NULL: a crash while the panel opens. A process that
 *                only opens /dev/gpiomem (a pre-flight) is not touched.
 *   abort-init   the same place calls abort().
 *   anything else, or no file: a working Pi.
 * The refresh thread looks at the file at most every 20 ms.
 *
 * Build: cc -shared -fPIC -O2 -o pi_shim.so pi_shim.c -ldl -pthread
 * Not a piece of the library: no code of rpi-rgb-led-matrix is in here. */

#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define PAGES 5
enum page { P_COUNTERS, P_GPIO, P_TIMER, P_PWM, P_CLK };

/* Page 0, one uint64 each. tests/hwsim/__init__.py has the same list. */
enum counter {
  C_MAGIC,            /* "LOOPSHIM" once the shim is up */
  C_PID,
  C_REFRESH_THREADS,  /* library threads started */
  C_REFRESH_RUNNING,  /* library threads running now */
  C_FRAMES,           /* refresh cycles completed (one full panel scan each) */
  C_VSYNC_WAITS,      /* SwapOnVSync calls that began waiting for a vsync */
  C_VSYNC_DONE,       /* ... and that returned */
  C_GPIOMEM_OPENS,
  C_DEVMEM_OPENS,     /* attempts, including refused ones */
  C_RT_REQUESTS,      /* real-time priority requests turned into no-ops */
  C_AFFINITY_REQUESTS,
  C_KERNEL_WRITES,    /* sched_rt_runtime_us / scaling_governor writes sent to /dev/null */
  C_DAEMON_CALLS,
  C_HANGING,          /* 1 while the refresh thread is held by the "hang" fault */
  C_LAST_FRAME_NS,    /* CLOCK_MONOTONIC of the last completed refresh */
  C_FAULTS,           /* faults applied (hang/slow episodes, crashes never return) */
  C_COUNT
};

#define MAX_FD 65536
static unsigned char fd_kind[MAX_FD]; /* 0: ours not, 1: /dev/gpiomem, 2: /dev/mem */

static int backing_fd = -1;
static volatile uint64_t *counters;
static volatile uint32_t *timer_page;
static char devmem_mode[16] = "eacces";
static const char *fault_file;
static long refresh_hz_cap;
static int refresh_nice = 10;

static __thread int tls_refresh __attribute__((tls_model("initial-exec")));
static __thread int tls_pending __attribute__((tls_model("initial-exec")));
static __thread pthread_cond_t *tls_frame_cond __attribute__((tls_model("initial-exec")));

#define MAX_FRAME_CONDS 16
static pthread_cond_t *volatile frame_conds[MAX_FRAME_CONDS];

/* The real functions. */
static int (*real_open)(const char *, int, ...);
static int (*real_open64)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static int (*real_openat64)(int, const char *, int, ...);
static FILE *(*real_fopen)(const char *, const char *);
static FILE *(*real_fopen64)(const char *, const char *);
static int (*real_close)(int);
static void *(*real_mmap)(void *, size_t, int, int, int, off_t);
static int (*real_stat)(const char *, struct stat *);
static int (*real_lstat)(const char *, struct stat *);
static int (*real_fstatat)(int, const char *, struct stat *, int);
static int (*real_access)(const char *, int);
static int (*real_faccessat)(int, const char *, int, int);
static int (*real_pthread_create)(pthread_t *, const pthread_attr_t *,
                                  void *(*)(void *), void *);
static int (*real_cond_signal)(pthread_cond_t *);
static int (*real_cond_wait)(pthread_cond_t *, pthread_mutex_t *);
static int (*real_mutex_unlock)(pthread_mutex_t *);
static int (*real_nanosleep)(const struct timespec *, struct timespec *);

static void resolve_all(void);
#define REAL(name) (real_##name ? real_##name : (resolve_all(), real_##name))

static void add(enum counter c, int64_t n) {
  if (counters) __atomic_fetch_add(&counters[c], (uint64_t)n, __ATOMIC_RELAXED);
}
static void put(enum counter c, uint64_t v) {
  if (counters) __atomic_store_n(&counters[c], v, __ATOMIC_RELAXED);
}

static void crash_here(void) {
  volatile int *nowhere = NULL;
  *nowhere = 1;
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void tick_timer(void) {
  /* The BCM 1 MHz counter (CLO at 0x04): the library reads it through its own mapping. */
  if (timer_page) timer_page[1] = (uint32_t)(now_ns() / 1000);
}

static void sleep_ns(uint64_t ns) {
  struct timespec ts = {(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)};
  while (REAL(nanosleep)(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* On a root Pi the library busy-waits on the 1 MHz counter (limit_refresh_rate_hz, short
 * pulses): nothing of ours runs in those loops, so a thread keeps the counter moving. */
static void *ticker(void *unused) {
  (void)unused;
  for (;;) {
    tick_timer();
    sleep_ns(250000ull);
  }
  return NULL;
}

#define RESOLVE(name) real_##name = dlsym(RTLD_NEXT, #name)

/* Wrappers can run before the constructor (another library's constructor may lock a
 * mutex or open a file first), so each one resolves on first use. */
static void resolve_all(void) {
  RESOLVE(open);
  RESOLVE(open64);
  RESOLVE(openat);
  RESOLVE(openat64);
  RESOLVE(fopen);
  RESOLVE(fopen64);
  RESOLVE(close);
  RESOLVE(mmap);
  RESOLVE(stat);
  RESOLVE(lstat);
  RESOLVE(fstatat);
  RESOLVE(access);
  RESOLVE(faccessat);
  real_pthread_create = dlsym(RTLD_NEXT, "pthread_create");
  real_cond_signal = dlsym(RTLD_NEXT, "pthread_cond_signal");
  real_cond_wait = dlsym(RTLD_NEXT, "pthread_cond_wait");
  real_mutex_unlock = dlsym(RTLD_NEXT, "pthread_mutex_unlock");
  RESOLVE(nanosleep);
}

__attribute__((constructor)) static void shim_init(void) {
  resolve_all();
  const char *mode = getenv("LOOP_SHIM_DEVMEM");
  if (mode && *mode) snprintf(devmem_mode, sizeof(devmem_mode), "%s", mode);
  fault_file = getenv("LOOP_SHIM_FAULT_FILE");
  const char *hz = getenv("LOOP_SHIM_REFRESH_HZ");
  if (hz) refresh_hz_cap = strtol(hz, NULL, 10);
  const char *nice_value = getenv("LOOP_SHIM_REFRESH_NICE");
  if (nice_value && *nice_value) refresh_nice = (int)strtol(nice_value, NULL, 10);

  const char *state = getenv("LOOP_SHIM_STATE");
  if (state && *state) {
    backing_fd = REAL(open)(state, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (backing_fd < 0) {
      fprintf(stderr, "pi_shim: cannot open LOOP_SHIM_STATE %s: %s\n", state, strerror(errno));
      abort();
    }
  }
  if (!getenv("LOOP_SHIM_INHERIT")) {
    /* This process is the simulated Pi; its children (ffmpeg, a shell) run on this machine.
     * Constructors run before main(), so Python's os.environ never sees these. */
    unsetenv("LD_PRELOAD");
    unsetenv("LOOP_SHIM_STATE");
  }
  if (backing_fd < 0) {
    backing_fd = memfd_create("loop-pi-shim", MFD_CLOEXEC);
  }
  if (backing_fd < 0 || ftruncate(backing_fd, PAGES * PAGE) != 0) {
    fprintf(stderr, "pi_shim: cannot create the simulated Pi's memory: %s\n",
            strerror(errno));
    abort();
  }
  counters = REAL(mmap)(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, backing_fd, 0);
  volatile uint32_t *pwm = REAL(mmap)(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED,
                                     backing_fd, P_PWM * PAGE);
  timer_page = REAL(mmap)(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, backing_fd,
                         P_TIMER * PAGE);
  if (counters == MAP_FAILED || pwm == MAP_FAILED || timer_page == MAP_FAILED) {
    fprintf(stderr, "pi_shim: mmap of the simulated Pi's memory failed\n");
    abort();
  }
  pwm[1] = 0x2; /* PWM STA: EMPT1, the FIFO is empty: a pulse is always finished */
  tick_timer();
  if (strcmp(devmem_mode, "root") == 0) {
    pthread_t t;
    if (REAL(pthread_create)(&t, NULL, ticker, NULL) == 0) pthread_detach(t);
  }
  memcpy((void *)&counters[C_MAGIC], "LOOPSHIM", 8);
  put(C_PID, (uint64_t)getpid());
}

/* ---- the simulated files ------------------------------------------------------------- */

static const char kCpuinfo[] =
    "processor\t: 0\nBogoMIPS\t: 38.40\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
    "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\n"
    "CPU part\t: 0xd03\nCPU revision\t: 4\n\n"
    "processor\t: 1\nBogoMIPS\t: 38.40\n\nprocessor\t: 2\nBogoMIPS\t: 38.40\n\n"
    "processor\t: 3\nBogoMIPS\t: 38.40\n\n"
    "Hardware\t: BCM2835\nRevision\t: %s\nSerial\t\t: 00000000a1b2c3d4\n"
    "Model\t\t: %s\n";
static const char kModules[] =
    "snd_bcm2835 24576 1 - Live 0x0000000000000000 (C)\n"
    "snd_pcm 114688 1 snd_bcm2835, Live 0x0000000000000000\n"
    "snd_timer 36864 1 snd_pcm, Live 0x0000000000000000\n"
    "snd 86016 5 snd_bcm2835,snd_pcm,snd_timer, Live 0x0000000000000000\n"
    "brcmfmac 299008 0 - Live 0x0000000000000000\n"
    "i2c_bcm2835 16384 0 - Live 0x0000000000000000\n";

static const char *revision(void) {
  const char *r = getenv("LOOP_SHIM_REVISION");
  return (r && *r) ? r : "902120";
}
static const char *model(void) {
  const char *m = getenv("LOOP_SHIM_MODEL");
  return (m && *m) ? m : "Raspberry Pi Zero 2 W Rev 1.0";
}

enum vfile { V_NONE, V_CPUINFO, V_MODEL, V_REVISION, V_MODULES, V_ISOLATED, V_KERNEL_KNOB,
             V_GPIOMEM, V_DEVMEM };

static enum vfile classify(const char *path) {
  if (path == NULL) return V_NONE;
  if (strcmp(path, "/proc/cpuinfo") == 0) return V_CPUINFO;
  if (strcmp(path, "/proc/device-tree/model") == 0) return V_MODEL;
  if (strcmp(path, "/sys/firmware/devicetree/base/model") == 0) return V_MODEL;
  if (strcmp(path, "/proc/device-tree/system/linux,revision") == 0) return V_REVISION;
  if (strcmp(path, "/proc/modules") == 0) return V_MODULES;
  if (strcmp(path, "/sys/devices/system/cpu/isolated") == 0) return V_ISOLATED;
  if (strcmp(path, "/proc/sys/kernel/sched_rt_runtime_us") == 0) return V_KERNEL_KNOB;
  if (strncmp(path, "/sys/devices/system/cpu/cpu", 27) == 0 &&
      strstr(path, "/cpufreq/scaling_governor") != NULL) return V_KERNEL_KNOB;
  if (strcmp(path, "/dev/gpiomem") == 0) return V_GPIOMEM;
  if (strcmp(path, "/dev/mem") == 0) return V_DEVMEM;
  return V_NONE;
}

/* The first word of the fault file, "" without one. */
static void read_fault(char *word, size_t size, long *arg) {
  word[0] = '\0';
  *arg = 0;
  if (!fault_file || !*fault_file) return;
  int fd = REAL(open)(fault_file, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  char buf[128];
  ssize_t n = read(fd, buf, sizeof(buf) - 1);
  REAL(close)(fd);
  if (n <= 0) return;
  buf[n] = '\0';
  char name[32] = "";
  if (sscanf(buf, "%31s %ld", name, arg) >= 1) snprintf(word, size, "%s", name);
}

static int memfd_with(const char *text, size_t len) {
  int fd = memfd_create("loop-pi-shim-file", MFD_CLOEXEC);
  if (fd < 0) return -1;
  if (len && write(fd, text, len) != (ssize_t)len) {
    REAL(close)(fd);
    errno = EIO;
    return -1;
  }
  lseek(fd, 0, SEEK_SET);
  return fd;
}

static int device_fd(unsigned char kind) {
  int fd = fcntl(backing_fd, F_DUPFD_CLOEXEC, 0);
  if (fd >= 0 && fd < MAX_FD) fd_kind[fd] = kind;
  return fd;
}

/* -1 with errno for a simulated file that fails, -2 for "not ours", else an fd. */
static int open_virtual(const char *path, int flags) {
  enum vfile v = classify(path);
  int writing = (flags & O_ACCMODE) != O_RDONLY;
  char text[2048];
  int len;
  switch (v) {
    case V_NONE:
      return -2;
    case V_GPIOMEM: {
      char word[32];
      long arg;
      add(C_GPIOMEM_OPENS, 1);
      read_fault(word, sizeof(word), &arg);
      if (strcmp(word, "nogpio") == 0) {
        errno = EACCES;
        return -1;
      }
      return device_fd(1);
    }
    case V_DEVMEM:
      add(C_DEVMEM_OPENS, 1);
      if (strcmp(devmem_mode, "root") == 0) return device_fd(2);
      errno = strcmp(devmem_mode, "enoent") == 0 ? ENOENT : EACCES;
      return -1;
    case V_KERNEL_KNOB:
      if (!writing) return -2;
      add(C_KERNEL_WRITES, 1);
      return REAL(open)("/dev/null", O_WRONLY | (flags & O_CLOEXEC));
    default:
      break;
  }
  if (writing) {
    errno = EACCES;
    return -1;
  }
  switch (v) {
    case V_CPUINFO:
      len = snprintf(text, sizeof(text), kCpuinfo, revision(), model());
      return memfd_with(text, (size_t)len);
    case V_MODEL:
      len = snprintf(text, sizeof(text), "%s", model());
      return memfd_with(text, (size_t)len + 1); /* device-tree strings end in NUL */
    case V_REVISION: {
      uint32_t rev = (uint32_t)strtoul(revision(), NULL, 16);
      unsigned char be[4] = {rev >> 24, rev >> 16, rev >> 8, rev};
      return memfd_with((const char *)be, 4);
    }
    case V_MODULES: {
      const char *m = getenv("LOOP_SHIM_MODULES");
      if (!m) m = kModules;
      return memfd_with(m, strlen(m));
    }
    case V_ISOLATED:
      return memfd_with("\n", 1);
    default:
      return -2;
  }
}

static mode_t mode_arg(int flags, va_list ap) {
  return (flags & (O_CREAT | O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

int open(const char *path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  mode_t mode = mode_arg(flags, ap);
  va_end(ap);
  int fd = open_virtual(path, flags);
  return fd == -2 ? REAL(open)(path, flags, mode) : fd;
}

int open64(const char *path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  mode_t mode = mode_arg(flags, ap);
  va_end(ap);
  int fd = open_virtual(path, flags);
  return fd == -2 ? REAL(open64)(path, flags, mode) : fd;
}

int __open_2(const char *path, int flags) { return open(path, flags); }
int __open64_2(const char *path, int flags) { return open64(path, flags); }

int openat(int dirfd, const char *path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  mode_t mode = mode_arg(flags, ap);
  va_end(ap);
  int fd = (path[0] == '/') ? open_virtual(path, flags) : -2;
  return fd == -2 ? REAL(openat)(dirfd, path, flags, mode) : fd;
}

int openat64(int dirfd, const char *path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  mode_t mode = mode_arg(flags, ap);
  va_end(ap);
  int fd = (path[0] == '/') ? open_virtual(path, flags) : -2;
  return fd == -2 ? REAL(openat64)(dirfd, path, flags, mode) : fd;
}

int __openat_2(int dirfd, const char *path, int flags) { return openat(dirfd, path, flags); }
int __openat64_2(int dirfd, const char *path, int flags) {
  return openat64(dirfd, path, flags);
}

static FILE *fopen_virtual(const char *path, const char *mode, int *ours) {
  *ours = 0;
  if (classify(path) == V_NONE) return NULL;
  int flags = O_RDONLY;
  if (mode[0] == 'w' || mode[0] == 'a') flags = O_WRONLY;
  if (strchr(mode, '+')) flags = O_RDWR;
  int fd = open_virtual(path, flags);
  if (fd == -2) return NULL;
  *ours = 1;
  if (fd < 0) return NULL;
  FILE *f = fdopen(fd, mode);
  if (!f) REAL(close)(fd);
  return f;
}

FILE *fopen(const char *path, const char *mode) {
  int ours;
  FILE *f = fopen_virtual(path, mode, &ours);
  return ours ? f : REAL(fopen)(path, mode);
}

FILE *fopen64(const char *path, const char *mode) {
  int ours;
  FILE *f = fopen_virtual(path, mode, &ours);
  return ours ? f : REAL(fopen64)(path, mode);
}

int close(int fd) {
  if (fd >= 0 && fd < MAX_FD) fd_kind[fd] = 0;
  return REAL(close)(fd);
}

static void *map_device(void *addr, size_t len, int prot, int flags, int fd, off_t offset) {
  enum page page = P_GPIO;
  if (fd_kind[fd] == 2) { /* /dev/mem: the block the peripheral offset names */
    switch ((uint64_t)offset & 0xFFFFFF) {
      case 0x200000: page = P_GPIO; break;
      case 0x003000: page = P_TIMER; break;
      case 0x20C000: page = P_PWM; break;
      case 0x101000: page = P_CLK; break;
      default:
        errno = EINVAL;
        return MAP_FAILED;
    }
  }
  if (len > PAGE) {
    errno = EINVAL;
    return MAP_FAILED;
  }
  return REAL(mmap)(addr, len, prot, flags, backing_fd, (off_t)page * PAGE);
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t offset) {
  if (fd >= 0 && fd < MAX_FD && fd_kind[fd]) {
    char word[32];
    long arg;
    read_fault(word, sizeof(word), &arg);
    if (strcmp(word, "segv-init") == 0) crash_here();
    if (strcmp(word, "abort-init") == 0) abort();
    return map_device(addr, len, prot, flags, fd, offset);
  }
  return REAL(mmap)(addr, len, prot, flags, fd, offset);
}

void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t offset) {
  return mmap(addr, len, prot, flags, fd, offset);
}

static void fake_stat(enum vfile v, struct stat *st) {
  memset(st, 0, sizeof(*st));
  st->st_nlink = 1;
  st->st_blksize = PAGE;
  if (v == V_GPIOMEM || v == V_DEVMEM) {
    st->st_mode = S_IFCHR | (v == V_GPIOMEM ? 0660 : 0640);
    st->st_rdev = v == V_GPIOMEM ? makedev(246, 0) : makedev(1, 1);
    st->st_gid = v == V_GPIOMEM ? 997 : 15; /* gpio, kmem on Raspberry Pi OS */
  } else {
    st->st_mode = S_IFREG | 0444;
  }
}

/* 1 when `path` is simulated (result in *st or errno), 0 when it is not ours. */
static int stat_virtual(const char *path, struct stat *st, int *result) {
  enum vfile v = classify(path);
  if (v == V_NONE || v == V_KERNEL_KNOB) return 0;
  if (v == V_DEVMEM && strcmp(devmem_mode, "enoent") == 0) {
    errno = ENOENT;
    *result = -1;
    return 1;
  }
  fake_stat(v, st);
  *result = 0;
  return 1;
}

int stat(const char *path, struct stat *st) {
  int r;
  return stat_virtual(path, st, &r) ? r : REAL(stat)(path, st);
}
/* The *64 variants take a struct stat64, laid out as struct stat on 64-bit Linux. */
_Static_assert(sizeof(struct stat) == sizeof(struct stat64), "64-bit Linux only");
int stat64(const char *path, struct stat64 *st) { return stat(path, (struct stat *)st); }
int lstat(const char *path, struct stat *st) {
  int r;
  return stat_virtual(path, st, &r) ? r : REAL(lstat)(path, st);
}
int lstat64(const char *path, struct stat64 *st) { return lstat(path, (struct stat *)st); }
int fstatat(int dirfd, const char *path, struct stat *st, int flags) {
  int r;
  if (path[0] == '/' && stat_virtual(path, st, &r)) return r;
  return REAL(fstatat)(dirfd, path, st, flags);
}
int fstatat64(int dirfd, const char *path, struct stat64 *st, int flags) {
  return fstatat(dirfd, path, (struct stat *)st, flags);
}

/* 1 when `path` is simulated (result in *r), 0 when not. */
static int access_virtual(const char *path, int how, int *r) {
  enum vfile v = classify(path);
  if (v == V_NONE || v == V_KERNEL_KNOB) return 0;
  *r = 0;
  if (v == V_DEVMEM && strcmp(devmem_mode, "root") != 0) {
    errno = strcmp(devmem_mode, "enoent") == 0 ? ENOENT : EACCES;
    *r = -1;
  } else if (v != V_GPIOMEM && v != V_DEVMEM && (how & (W_OK | X_OK))) {
    errno = EACCES;
    *r = -1;
  }
  return 1;
}

int access(const char *path, int how) {
  int r;
  return access_virtual(path, how, &r) ? r : REAL(access)(path, how);
}
int faccessat(int dirfd, const char *path, int how, int flags) {
  int r;
  if (path[0] == '/' && access_virtual(path, how, &r)) return r;
  return REAL(faccessat)(dirfd, path, how, flags);
}
int euidaccess(const char *path, int how) { return faccessat(AT_FDCWD, path, how, AT_EACCESS); }
int eaccess(const char *path, int how) { return euidaccess(path, how); }

/* ---- scheduling: no real-time, no pinning ------------------------------------------- */

int pthread_setschedparam(pthread_t thread, int policy, const struct sched_param *param) {
  (void)thread;
  (void)policy;
  (void)param;
  add(C_RT_REQUESTS, 1);
  return 0;
}
int pthread_setschedprio(pthread_t thread, int prio) {
  (void)thread;
  (void)prio;
  add(C_RT_REQUESTS, 1);
  return 0;
}
int sched_setscheduler(pid_t pid, int policy, const struct sched_param *param) {
  (void)pid;
  (void)policy;
  (void)param;
  add(C_RT_REQUESTS, 1);
  return 0;
}
int sched_setparam(pid_t pid, const struct sched_param *param) {
  (void)pid;
  (void)param;
  add(C_RT_REQUESTS, 1);
  return 0;
}
int pthread_setaffinity_np(pthread_t thread, size_t size, const cpu_set_t *set) {
  (void)thread;
  (void)size;
  (void)set;
  add(C_AFFINITY_REQUESTS, 1);
  return 0;
}
int sched_setaffinity(pid_t pid, size_t size, const cpu_set_t *set) {
  (void)pid;
  (void)size;
  (void)set;
  add(C_AFFINITY_REQUESTS, 1);
  return 0;
}
int daemon(int nochdir, int noclose) {
  (void)nochdir;
  (void)noclose;
  add(C_DAEMON_CALLS, 1);
  return 0;
}

/* ---- the refresh thread -------------------------------------------------------------- */

struct start {
  void *(*fn)(void *);
  void *arg;
};

static void *refresh_thread(void *p) {
  struct start s = *(struct start *)p;
  free(p);
  tls_refresh = 1;
  setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), refresh_nice);
  add(C_REFRESH_THREADS, 1);
  add(C_REFRESH_RUNNING, 1);
  void *result = s.fn(s.arg);
  add(C_REFRESH_RUNNING, -1);
  return result;
}

/* Code of the library: .../rgbmatrix/core*.so or graphics*.so (the Python binding links the
 * whole library into both), or librgbmatrix.so* for a C++ program. Not a path that merely
 * contains "rgbmatrix", like the Python of .venv-rgbmatrix. */
static int from_the_library(void *fn) {
  Dl_info info;
  if (!dladdr(fn, &info) || !info.dli_fname) return 0;
  const char *path = info.dli_fname;
  const char *base = strrchr(path, '/');
  base = base ? base + 1 : path;
  if (strncmp(base, "librgbmatrix", 12) == 0) return 1;
  if (strncmp(base, "core", 4) != 0 && strncmp(base, "graphics", 8) != 0) return 0;
  size_t dir_len = (size_t)(base - path);
  return dir_len >= 11 && strncmp(base - 11, "/rgbmatrix/", 11) == 0;
}

int pthread_create(pthread_t *thread, const pthread_attr_t *attr, void *(*fn)(void *),
                   void *arg) {
  if (!from_the_library((void *)fn)) return REAL(pthread_create)(thread, attr, fn, arg);
  struct start *s = malloc(sizeof(*s));
  if (!s) return EAGAIN;
  s->fn = fn;
  s->arg = arg;
  int err = REAL(pthread_create)(thread, attr, refresh_thread, s);
  if (err) free(s);
  return err;
}

static int is_frame_cond(pthread_cond_t *cond) {
  for (int i = 0; i < MAX_FRAME_CONDS; ++i) {
    if (frame_conds[i] == cond) return 1;
  }
  return 0;
}

static void remember_frame_cond(pthread_cond_t *cond) {
  for (int i = 0; i < MAX_FRAME_CONDS; ++i) {
    pthread_cond_t *expected = NULL;
    if (frame_conds[i] == cond) return;
    if (__atomic_compare_exchange_n(&frame_conds[i], &expected, cond, 0, __ATOMIC_SEQ_CST,
                                    __ATOMIC_SEQ_CST)) return;
  }
}

int pthread_cond_signal(pthread_cond_t *cond) {
  if (tls_refresh) {
    tick_timer();
    /* The refresh loop signals its frame-done condition once per cycle (and an input
     * condition only when GPLEV0 changes), so the first one it signals is frame-done. */
    if (tls_frame_cond == NULL) {
      tls_frame_cond = cond;
      remember_frame_cond(cond);
    }
    if (cond == tls_frame_cond) {
      add(C_FRAMES, 1);
      put(C_LAST_FRAME_NS, now_ns());
      tls_pending = 1;
    }
  }
  return REAL(cond_signal)(cond);
}

/* Whether a call comes from the library (for the first SwapOnVSync, which can wait before
 * the refresh thread has signalled its condition once). */
static int called_from_library(void *ret) {
  static void *volatile known[8];
  for (int i = 0; i < 8; ++i) {
    if (known[i] == ret) return 1;
  }
  if (!from_the_library(ret)) return 0;
  for (int i = 0; i < 8; ++i) {
    void *expected = NULL;
    if (__atomic_compare_exchange_n(&known[i], &expected, ret, 0, __ATOMIC_SEQ_CST,
                                    __ATOMIC_SEQ_CST)) break;
  }
  return 1;
}

int pthread_cond_wait(pthread_cond_t *cond, pthread_mutex_t *mutex) {
  if (tls_refresh ||
      !(is_frame_cond(cond) || called_from_library(__builtin_return_address(0)))) {
    return REAL(cond_wait)(cond, mutex);
  }
  /* A SwapOnVSync waiting for the next vsync. */
  char word[32];
  long arg;
  read_fault(word, sizeof(word), &arg);
  if (strcmp(word, "segv-swap") == 0) crash_here();
  add(C_VSYNC_WAITS, 1);
  int r = REAL(cond_wait)(cond, mutex);
  add(C_VSYNC_DONE, 1);
  return r;
}

/* After each refresh cycle, outside the library's frame lock: pace and faults. */
static void after_frame(void) {
  static __thread uint64_t next_slot, checked_at;
  static __thread char word[32];
  static __thread long arg;
  uint64_t now = now_ns();
  if (now - checked_at > 20000000ull) {
    read_fault(word, sizeof(word), &arg);
    checked_at = now;
  }
  if (strcmp(word, "segv") == 0) crash_here();
  if (strcmp(word, "abort") == 0) abort();
  if (strcmp(word, "slow") == 0 && arg > 0) {
    add(C_FAULTS, 1);
    sleep_ns((uint64_t)arg * 1000000ull);
  }
  if (strcmp(word, "hang") == 0) {
    add(C_FAULTS, 1);
    put(C_HANGING, 1);
    while (strcmp(word, "hang") == 0) {
      sleep_ns(20000000ull);
      read_fault(word, sizeof(word), &arg);
    }
    put(C_HANGING, 0);
    checked_at = now_ns();
  }
  if (refresh_hz_cap > 0) {
    uint64_t period = 1000000000ull / (uint64_t)refresh_hz_cap;
    now = now_ns();
    if (next_slot > now) sleep_ns(next_slot - now);
    next_slot = (next_slot > now ? next_slot : now) + period;
  }
  tick_timer();
}

int pthread_mutex_unlock(pthread_mutex_t *mutex) {
  int r = REAL(mutex_unlock)(mutex);
  if (tls_pending) {
    tls_pending = 0;
    after_frame();
  }
  return r;
}

int nanosleep(const struct timespec *req, struct timespec *rem) {
  int r = REAL(nanosleep)(req, rem);
  if (tls_refresh) tick_timer();
  return r;
}
