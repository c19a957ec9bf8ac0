/*
 * Oracle for aioelastic's CronTrigger: asks real Quartz (2.3.x) CronExpression for fire times.
 *
 * Input (stdin), one query per line, fields separated by US (U+001F, so that expressions may
 * contain tabs):  expression US zone US startEpochMillis US n
 *   n = 0 only parses the expression.
 * Output (stdout), one line per query, tab-separated:
 *   OK  TAB fires      fires = comma-separated epoch millis of the next n fire times, each from
 *                      getNextValidTimeAfter(previous), previous starting at startEpochMillis;
 *                      a trailing '*' marks a fire near a UTC-offset transition of the zone:
 *                      one lies in (previous - 2 h, fire], so wall-clock time was not
 *                      continuous around the step (DST gap or repeated hour);
 *                      the token 'null' ends the list when Quartz returns null.
 *   ERR TAB message    the expression does not parse (ParseException message, or exception).
 *   EVAL TAB message   parsing succeeded but getNextValidTimeAfter threw or did not return.
 * Dependency-free apart from the Quartz jar (CronExpression itself needs no logging).
 */

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.text.ParseException;
import java.time.Instant;
import java.time.ZoneId;
import java.time.zone.ZoneOffsetTransition;
import java.time.zone.ZoneRules;
import java.util.Date;
import java.util.TimeZone;
import org.quartz.CronExpression;

public final class QuartzOracle {
    /** Look-back for transitions: longer than any DST shift, so a start in a repeated hour counts. */
    private static final long NEAR_MILLIS = 2 * 3600 * 1000L;

    private static final long EVAL_TIMEOUT_MILLIS = 5000;

    private QuartzOracle() {}

    public static void main(String[] args) throws Exception {
        BufferedReader in =
                new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        PrintStream out = new PrintStream(System.out, false, "UTF-8");
        String line;
        while ((line = in.readLine()) != null) {
            if (line.isEmpty()) {
                continue;
            }
            String[] parts = line.split("\u001f", -1);
            out.println(answer(parts[0], parts[1], Long.parseLong(parts[2]),
                    Integer.parseInt(parts[3])));
        }
        out.flush();
    }

    private static String answer(String expression, String zone, long start, int n)
            throws InterruptedException {
        ZoneRules rules = ZoneId.of(zone).getRules(); // throws on an unknown zone
        CronExpression cron;
        try {
            cron = new CronExpression(expression);
        } catch (ParseException e) {
            return "ERR\t" + clean(e.getMessage());
        } catch (RuntimeException e) {
            return "ERR\t" + clean(e.toString());
        }
        cron.setTimeZone(TimeZone.getTimeZone(zone));
        String[] result = {null};
        // Some accepted expressions make Quartz loop forever (e.g. day-of-month "0W").
        Thread worker = new Thread(() -> result[0] = fires(cron, rules, start, n));
        worker.setDaemon(true);
        worker.start();
        worker.join(EVAL_TIMEOUT_MILLIS);
        if (worker.isAlive()) {
            return "EVAL\tgetNextValidTimeAfter did not return within "
                    + EVAL_TIMEOUT_MILLIS / 1000 + " s";
        }
        return result[0];
    }

    private static String fires(CronExpression cron, ZoneRules rules, long start, int n) {
        StringBuilder fires = new StringBuilder();
        long previous = start;
        try {
            for (int i = 0; i < n; i++) {
                Date next = cron.getNextValidTimeAfter(new Date(previous));
                if (fires.length() > 0) {
                    fires.append(',');
                }
                if (next == null) {
                    fires.append("null");
                    break;
                }
                fires.append(next.getTime());
                if (nearTransition(rules, previous, next.getTime())) {
                    fires.append('*');
                }
                previous = next.getTime();
            }
        } catch (RuntimeException e) {
            return "EVAL\t" + clean(e.toString());
        }
        return "OK\t" + fires;
    }

    private static boolean nearTransition(ZoneRules rules, long from, long to) {
        ZoneOffsetTransition t = rules.nextTransition(Instant.ofEpochMilli(from - NEAR_MILLIS));
        return t != null && t.getInstant().toEpochMilli() <= to;
    }

    private static String clean(String message) {
        return String.valueOf(message).replace('\t', ' ').replace('\n', ' ').replace('\r', ' ');
    }
}
