// cimstack simulation server: the Verilated SoC (byte-stream PHY) with its host link on TCP.
//
//   cim_server --port P [--host 127.0.0.1] [--stats FILE]
//
// Prints "cimstack sim server listening on HOST:PORT" once bound (port 0 picks a free one),
// then serves one client at a time; the SoC keeps its state between clients. Bytes from the
// client enter the SoC's rx stream, bytes on its tx stream go back. When nothing is pending
// and the SoC is idle, the server sleeps in poll() instead of clocking. SIGINT/SIGTERM (or
// the death of the parent process) stop it cleanly; --stats then receives a JSON summary.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <string>
#include <vector>

#include "Vcim_soc.h"
#include "verilated.h"

// Verilator escapes the "__" of Amaranth port names (rx__valid) as "___05F".

static volatile sig_atomic_t g_stop = 0;
static void on_signal(int) { g_stop = 1; }

static void die(const char* what) {
    std::fprintf(stderr, "cim_server: %s: %s\n", what, std::strerror(errno));
    std::exit(2);
}

int main(int argc, char** argv) {
    int port = 0;
    std::string host = "127.0.0.1", stats_path;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "--port" && i + 1 < argc) port = std::atoi(argv[++i]);
        else if (a == "--host" && i + 1 < argc) host = argv[++i];
        else if (a == "--stats" && i + 1 < argc) stats_path = argv[++i];
        else { std::fprintf(stderr, "usage: %s --port P [--host H] [--stats FILE]\n", argv[0]); return 2; }
    }
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
    signal(SIGPIPE, SIG_IGN);

    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    if (lfd < 0) die("socket");
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr {};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    if (inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) { std::fprintf(stderr, "cim_server: bad host %s\n", host.c_str()); return 2; }
    if (bind(lfd, (sockaddr*)&addr, sizeof addr) < 0) die("bind");
    if (listen(lfd, 1) < 0) die("listen");
    socklen_t alen = sizeof addr;
    getsockname(lfd, (sockaddr*)&addr, &alen);
    std::printf("cimstack sim server listening on %s:%d\n", host.c_str(), ntohs(addr.sin_port));
    std::fflush(stdout);

    auto* ctx = new VerilatedContext;
    auto* top = new Vcim_soc {ctx};
    uint64_t cycles = 0;
    auto tick = [&]() {
        top->clk = 0; top->eval();
        top->clk = 1; top->eval();
        ++cycles;
    };
    top->rst = 1; top->rx___05Fvalid = 0; top->tx___05Fready = 1;
    for (int i = 0; i < 4; ++i) tick();
    top->rst = 0;

    std::deque<uint8_t> rx;
    std::vector<uint8_t> tx;
    uint64_t bytes_in = 0, bytes_out = 0, clients = 0;
    double busy_wall = 0.0;
    uint64_t busy_cycles = 0;
    int cfd = -1;
    uint8_t buf[65536];
    const int BATCH = 4096;
    auto t_start = std::chrono::steady_clock::now();

    while (!g_stop) {
        if (cfd < 0) {
            pollfd p {lfd, POLLIN, 0};
            if (poll(&p, 1, 100) > 0 && (p.revents & POLLIN)) {
                cfd = accept(lfd, nullptr, nullptr);
                if (cfd >= 0) {
                    fcntl(cfd, F_SETFL, O_NONBLOCK);
                    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    ++clients;
                }
            }
            continue;
        }
        // take what the client sent
        if (rx.size() < sizeof buf) {
            ssize_t n = recv(cfd, buf, sizeof buf, 0);
            if (n > 0) { rx.insert(rx.end(), buf, buf + n); bytes_in += n; }
            else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) { close(cfd); cfd = -1; rx.clear(); continue; }
        }
        bool active = !rx.empty() || top->busy;
        if (!active) {
            // idle: sleep until the client sends something (or a signal arrives)
            pollfd p {cfd, POLLIN, 0};
            poll(&p, 1, 50);
            continue;
        }
        auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < BATCH; ++i) {
            top->clk = 0;
            top->rx___05Fvalid = !rx.empty();
            top->rx___05Fpayload = rx.empty() ? 0 : rx.front();
            top->tx___05Fready = 1;
            top->eval();
            bool rx_taken = top->rx___05Fvalid && top->rx___05Fready;
            bool tx_taken = top->tx___05Fvalid && top->tx___05Fready;
            uint8_t txb = top->tx___05Fpayload;
            top->clk = 1;
            top->eval();
            ++cycles;
            if (rx_taken) rx.pop_front();
            if (tx_taken) tx.push_back(txb);
            if (rx.empty() && !top->busy && !top->rx___05Fvalid) break;
        }
        busy_wall += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (!tx.empty()) {
            size_t off = 0;
            while (off < tx.size() && !g_stop) {
                ssize_t n = send(cfd, tx.data() + off, tx.size() - off, 0);
                if (n > 0) off += n;
                else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) { pollfd p {cfd, POLLOUT, 0}; poll(&p, 1, 50); }
                else break;
            }
            bytes_out += off;
            tx.clear();
        }
    }
    (void)busy_cycles;
    if (cfd >= 0) close(cfd);
    close(lfd);
    double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    if (!stats_path.empty()) {
        if (FILE* f = std::fopen(stats_path.c_str(), "w")) {
            std::fprintf(f, "{\"cycles\": %llu, \"active_wall_s\": %.6f, \"wall_s\": %.6f, \"bytes_in\": %llu, "
                            "\"bytes_out\": %llu, \"clients\": %llu}\n",
                         (unsigned long long)cycles, busy_wall, wall, (unsigned long long)bytes_in,
                         (unsigned long long)bytes_out, (unsigned long long)clients);
            std::fclose(f);
        }
    }
    top->final();
    delete top;
    delete ctx;
    return 0;
}
