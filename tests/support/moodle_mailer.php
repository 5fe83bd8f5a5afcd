<?php
// Moodle's way of sending mail, through PHPMailer (Debian's libphp-phpmailer): what
// email_to_user() and get_mailer() do with smtphosts, smtpsecure, smtpauthtype = LOGIN,
// smtpuser, smtppass and smtpmaxbulk: one mailer kept open (SMTPKeepAlive) for
// smtpmaxbulk messages, then closed and a new session opened; Sender is the noreply
// address. Reads {"host", "port", "secure", "user", "pass", "maxbulk", "messages": [...]}
// as JSON on stdin; prints one {"ok", "message_id" | "error"} per message as JSON.
require '/usr/share/php/libphp-phpmailer/autoload.php';

use PHPMailer\PHPMailer\PHPMailer;
use PHPMailer\PHPMailer\Exception;

$cfg = json_decode(file_get_contents('php://stdin'), true);
$mail = null;
$count = 0;
$results = [];
foreach ($cfg['messages'] as $m) {
    if ($mail === null) {
        $mail = new PHPMailer(true);
        $mail->isSMTP();
        $mail->Host = $cfg['host'];
        $mail->Port = $cfg['port'];
        $mail->SMTPAuth = true;
        $mail->AuthType = 'LOGIN';
        $mail->Username = $cfg['user'];
        $mail->Password = $cfg['pass'];
        $mail->SMTPSecure = $cfg['secure'] ?? '';
        $mail->SMTPAutoTLS = ($cfg['secure'] ?? '') !== '';
        $mail->SMTPKeepAlive = $cfg['maxbulk'] > 1;
        $mail->CharSet = 'UTF-8';
        $mail->Timeout = 30;
        if (!empty($cfg['cafile'])) {
            $mail->SMTPOptions = ['ssl' => ['cafile' => $cfg['cafile'], 'verify_peer_name' => false]];
        }
    }
    try {
        $mail->Sender = $m['sender'];
        $mail->setFrom($m['from'], $m['from_name'], false);
        $mail->addAddress($m['to'], $m['to_name'] ?? '');
        foreach ($m['cc'] ?? [] as $cc) {
            $mail->addCC($cc);
        }
        foreach ($m['bcc'] ?? [] as $bcc) {
            $mail->addBCC($bcc);
        }
        $mail->Subject = $m['subject'];
        if (!empty($m['html'])) {
            $mail->isHTML(true);
            $mail->Body = $m['html'];
            $mail->AltBody = $m['text'];
        } else {
            $mail->isHTML(false);
            $mail->Body = $m['text'];
        }
        foreach ($m['headers'] ?? [] as $name => $value) {
            $mail->addCustomHeader($name, $value);
        }
        foreach ($m['attachments'] ?? [] as $a) {
            $mail->addStringAttachment(base64_decode($a['content']), $a['filename'], PHPMailer::ENCODING_BASE64,
                                       $a['type']);
        }
        $mail->send();
        $results[] = ['ok' => true, 'message_id' => $mail->getLastMessageID()];
    } catch (Exception $e) {
        $results[] = ['ok' => false, 'error' => $mail->ErrorInfo];
    }
    $mail->clearAllRecipients();
    $mail->clearAttachments();
    $mail->clearCustomHeaders();
    if (++$count % $cfg['maxbulk'] === 0) {
        $mail->smtpClose();
        $mail = null;
    }
}
if ($mail !== null) {
    $mail->smtpClose();
}
echo json_encode($results);
