// Provisions a broker started with `build-support/kafka/broker --sasl`: the
// services' SCRAM users, the platform's topics and every ACL, as the admin
// principal, in one JVM (Java's single-file launcher, no build step):
//
//   java -cp "$KAFKA_LIBS/*" build-support/kafka/Provision.java --bootstrap HOST:PORT[,...] \
//     --credentials DIR [--prefix P] [--partitions 6] [--dlq-partitions 1] \
//     [--replication 1] [--min-insync N]
//
// DIR holds kafka-<principal>.password for admin and each service. Idempotent:
// a user's password is set again (so a changed file rotates it), topics that
// exist are left alone, ACLs that exist are not doubled. What each service may
// do, and nothing more:
//   order-api             write order.placed; read payment.completed and
//                         order.unprocessable; write order.dlq; groups order-api*
//   payment-service       read order.placed; write payment.completed and
//                         order.unprocessable; write payment.dlq; groups payment-service*
//   notification-service  read payment.completed; write notification.dlq;
//                         groups notification-service*
// (Describe on each of its topics, DescribeConfigs on its dead-letter topic;
// topics are the admin's to create.)
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.ScramCredentialInfo;
import org.apache.kafka.clients.admin.ScramMechanism;
import org.apache.kafka.clients.admin.UserScramCredentialAlteration;
import org.apache.kafka.clients.admin.UserScramCredentialUpsertion;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourceType;

public class Provision {
    static final String[] SERVICES = {"order-api", "payment-service", "notification-service"};
    static final int EVENT_MAX_MESSAGE_BYTES = 1_048_588;
    static final int DLQ_MAX_MESSAGE_BYTES = EVENT_MAX_MESSAGE_BYTES + 65_536;

    public static void main(String[] args) throws Exception {
        Map<String, String> options = new HashMap<>();
        for (int i = 0; i + 1 < args.length; i += 2) {
            if (!args[i].startsWith("--")) usage("unexpected argument " + args[i]);
            options.put(args[i].substring(2), args[i + 1]);
        }
        if (args.length % 2 != 0) usage("every option takes a value");
        String bootstrap = required(options, "bootstrap");
        Path credentials = Path.of(required(options, "credentials"));
        String prefix = options.getOrDefault("prefix", "");
        int partitions = Integer.parseInt(options.getOrDefault("partitions", "6"));
        int dlqPartitions = Integer.parseInt(options.getOrDefault("dlq-partitions", "1"));
        short replication = Short.parseShort(options.getOrDefault("replication", "1"));
        String minInsync = options.get("min-insync");

        Properties properties = new Properties();
        properties.put("bootstrap.servers", bootstrap);
        properties.put("security.protocol", "SASL_PLAINTEXT");
        properties.put("sasl.mechanism", "SCRAM-SHA-512");
        properties.put("sasl.jaas.config", "org.apache.kafka.common.security.scram.ScramLoginModule required username=\"admin\" password=\""
                + password(credentials, "admin") + "\";");
        properties.put("request.timeout.ms", "15000");
        properties.put("default.api.timeout.ms", "60000");
        try (Admin admin = Admin.create(properties)) {
            List<UserScramCredentialAlteration> users = new ArrayList<>();
            for (String service : SERVICES) {
                users.add(new UserScramCredentialUpsertion(service,
                        new ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192), password(credentials, service)));
            }
            admin.alterUserScramCredentials(users).all().get(60, TimeUnit.SECONDS);

            List<NewTopic> topics = new ArrayList<>();
            for (String name : new String[] {"order.placed", "payment.completed", "order.unprocessable"}) {
                topics.add(topic(prefix + name, partitions, replication, EVENT_MAX_MESSAGE_BYTES, minInsync));
            }
            for (String name : new String[] {"order.dlq", "payment.dlq", "notification.dlq"}) {
                topics.add(topic(prefix + name, dlqPartitions, replication, DLQ_MAX_MESSAGE_BYTES, minInsync));
            }
            int created = 0;
            for (var result : admin.createTopics(topics).values().entrySet()) {
                try {
                    result.getValue().get(60, TimeUnit.SECONDS);
                    created++;
                } catch (ExecutionException error) {
                    if (!(error.getCause() instanceof TopicExistsException)) throw error;
                }
            }

            List<AclBinding> acls = new ArrayList<>();
            allow(acls, "order-api", prefix + "order.placed", AclOperation.WRITE, AclOperation.DESCRIBE);
            allow(acls, "order-api", prefix + "payment.completed", AclOperation.READ, AclOperation.DESCRIBE);
            allow(acls, "order-api", prefix + "order.unprocessable", AclOperation.READ, AclOperation.DESCRIBE);
            allow(acls, "order-api", prefix + "order.dlq", AclOperation.WRITE, AclOperation.DESCRIBE, AclOperation.DESCRIBE_CONFIGS);
            allow(acls, "payment-service", prefix + "order.placed", AclOperation.READ, AclOperation.DESCRIBE);
            allow(acls, "payment-service", prefix + "payment.completed", AclOperation.WRITE, AclOperation.DESCRIBE);
            allow(acls, "payment-service", prefix + "order.unprocessable", AclOperation.WRITE, AclOperation.DESCRIBE);
            allow(acls, "payment-service", prefix + "payment.dlq", AclOperation.WRITE, AclOperation.DESCRIBE, AclOperation.DESCRIBE_CONFIGS);
            allow(acls, "notification-service", prefix + "payment.completed", AclOperation.READ, AclOperation.DESCRIBE);
            allow(acls, "notification-service", prefix + "notification.dlq", AclOperation.WRITE, AclOperation.DESCRIBE, AclOperation.DESCRIBE_CONFIGS);
            for (String service : SERVICES) {
                // Its groups: the configured one and those named after it
                // (order-api's second group, order-api.unprocessable).
                acls.add(new AclBinding(new ResourcePattern(ResourceType.GROUP, service, PatternType.PREFIXED),
                        new AccessControlEntry("User:" + service, "*", AclOperation.READ, AclPermissionType.ALLOW)));
            }
            admin.createAcls(acls).all().get(60, TimeUnit.SECONDS);
            // The controller has them; a broker's authorizer applies them when
            // it replays the metadata: wait until the broker asked lists them
            // all, so that nothing is refused right after this returns.
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(30);
            while (true) {
                var listed = admin.describeAcls(org.apache.kafka.common.acl.AclBindingFilter.ANY).values()
                        .get(30, TimeUnit.SECONDS);
                if (listed.containsAll(acls)) break;
                if (System.nanoTime() > deadline) {
                    throw new IllegalStateException("the broker did not list the new ACLs within 30 s");
                }
                Thread.sleep(100);
            }
            System.out.printf("kafka: %d service users, %d topics created (%d already there), %d ACLs%n",
                    SERVICES.length, created, topics.size() - created, acls.size());
        }
    }

    static NewTopic topic(String name, int partitions, short replication, int maxMessageBytes, String minInsync) {
        Map<String, String> configs = new HashMap<>();
        configs.put("max.message.bytes", Integer.toString(maxMessageBytes));
        if (minInsync != null && !minInsync.isEmpty()) configs.put("min.insync.replicas", minInsync);
        return new NewTopic(name, partitions, replication).configs(configs);
    }

    static void allow(List<AclBinding> acls, String service, String topic, AclOperation... operations) {
        for (AclOperation operation : operations) {
            acls.add(new AclBinding(new ResourcePattern(ResourceType.TOPIC, topic, PatternType.LITERAL),
                    new AccessControlEntry("User:" + service, "*", operation, AclPermissionType.ALLOW)));
        }
    }

    static String password(Path credentials, String principal) throws Exception {
        Path file = credentials.resolve("kafka-" + principal + ".password");
        if (!Files.isReadable(file)) usage("no password file " + file);
        return Files.readString(file).strip();
    }

    static String required(Map<String, String> options, String name) {
        String value = options.get(name);
        if (value == null || value.isEmpty()) usage("--" + name + " is required");
        return value;
    }

    static void usage(String problem) {
        System.err.println("kafka/Provision: " + problem);
        System.exit(2);
    }
}
